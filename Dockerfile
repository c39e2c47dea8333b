# megatron-mmed on H100 clusters. The NGC PyTorch image carries CUDA, cuDNN, NCCL, Transformer Engine (FP8)
# and apex, built together; we keep its torch and add our pinned requirements on top.
#   docker build -t megatron-mmed .      # then CONTAINER_IMAGE=... launch/pretrain_internlm2_7b.sh (pyxis)
FROM nvcr.io/nvidia/pytorch:25.04-py3

WORKDIR /opt/megatron-mmed
COPY requirements.txt constraints.txt ./
# Install exactly requirements.txt, except torch: the image's own CUDA torch is pinned as the constraint so
# that no requirement can replace it (constraints.txt pins the CPU build used off-cluster).
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/image-constraints.txt \
 && grep -v '^torch==' requirements.txt > /tmp/requirements-image.txt \
 && pip install --no-cache-dir -c /tmp/image-constraints.txt -r /tmp/requirements-image.txt \
 && python -c "import torch, transformer_engine; print('torch', torch.__version__, 'TE', transformer_engine.__version__)"
COPY . .
RUN pip install --no-cache-dir --no-deps -e .
ENV CUDA_DEVICE_MAX_CONNECTIONS=1
ENTRYPOINT []
CMD ["mmed", "--help"]
