"""Inputs for the ``mmed extract`` tests, made by the tests: textbook PDFs (fpdf2 + Noto CJK from Debian), scans
of their pages (rendered, re-wrapped as image-only PDFs), and a character error rate to score extractions.

A generated book has a cover, a copyright page, a table of contents, a preface, chapters whose body paragraphs
are real medical text from ``shared/data/corpus``, a bibliography and an index; running headers (book title on
even pages, chapter title on odd ones), page numbers in the footer, first-line indents, and words hyphenated at
line ends. ``Book.chapters`` holds the text an extractor should return for each chapter.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

NOTO_CJK = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
CJK = ("zh", "ja")

STRINGS = {
    "en": dict(
        book="Handbook of Clinical Medicine",
        chapter="Chapter {n}",
        contents="Contents",
        preface="Preface",
        refs="References",
        index="Index",
        titles=["Cardiology", "Infectious Diseases", "Endocrinology"],
        preface_text="This handbook was written for students and young doctors. It summarises what every "
        "clinician should know about common diseases and their treatment.",
        copyright="© 2024 Example Medical Press. All rights reserved. ISBN 978-0-00-000000-1",
    ),
    "fr": dict(
        book="Manuel de médecine clinique",
        chapter="Chapitre {n}",
        contents="Table des matières",
        preface="Préface",
        refs="Bibliographie",
        index="Index",
        titles=["Cardiologie", "Maladies infectieuses", "Endocrinologie"],
        preface_text="Ce manuel a été écrit pour les étudiants et les jeunes médecins. Il résume ce que tout "
        "clinicien doit savoir sur les maladies courantes et leur traitement.",
        copyright="© 2024 Éditions Médicales Exemple. Tous droits réservés. ISBN 978-0-00-000000-2",
    ),
    "es": dict(
        book="Manual de medicina clínica",
        chapter="Capítulo {n}",
        contents="Índice",
        preface="Prefacio",
        refs="Bibliografía",
        index="Índice alfabético",
        titles=["Cardiología", "Enfermedades infecciosas", "Endocrinología"],
        preface_text="Este manual fue escrito para estudiantes y médicos jóvenes. Resume lo que todo clínico "
        "debe saber sobre las enfermedades frecuentes y su tratamiento.",
        copyright="© 2024 Editorial Médica Ejemplo. Todos los derechos reservados. ISBN 978-0-00-000000-3",
    ),
    "ru": dict(
        book="Руководство по клинической медицине",
        chapter="Глава {n}",
        contents="Содержание",
        preface="Предисловие",
        refs="Список литературы",
        index="Предметный указатель",
        titles=["Кардиология", "Инфекционные болезни", "Эндокринология"],
        preface_text="Это руководство написано для студентов и молодых врачей. В нём кратко изложено то, что "
        "должен знать каждый клиницист о частых болезнях и их лечении.",
        copyright="© 2024 Пример Медицинского Издательства. Все права защищены. ISBN 978-0-00-000000-4",
    ),
    "zh": dict(
        book="临床医学手册",
        chapter="第{n}章",
        contents="目录",
        preface="前言",
        refs="参考文献",
        index="索引",
        titles=["心脏病学", "感染性疾病", "内分泌学"],
        preface_text="本手册为医学生和青年医生编写，概述了每位临床医生应当掌握的常见疾病及其治疗。",
        copyright="© 2024 示例医学出版社 版权所有 ISBN 978-0-00-000000-5",
    ),
    "ja": dict(
        book="臨床医学ハンドブック",
        chapter="第{n}章",
        contents="目次",
        preface="まえがき",
        refs="参考文献",
        index="索引",
        titles=["循環器病学", "感染症", "内分泌学"],
        preface_text="本書は医学生と若手医師のために書かれた。日常診療でよく出会う病気とその治療について、"
        "すべての臨床医が知っておくべきことをまとめている。",
        copyright="© 2024 例示医学出版 著作権所有 無断転載禁止 ISBN 978-0-00-000000-6",
    ),
}

# A5 page, points
W, H = 420.0, 595.0
MARGIN_L, MARGIN_R = 48.0, 48.0
BODY_TOP, BODY_BOTTOM = 70.0, 535.0
SIZE, LEADING = 10.0, 14.5
HEADER_Y, FOOTER_Y = 36.0, 568.0


def font_path(lang: str) -> tuple[Path, int]:
    """Noto Sans CJK (Debian fonts-noto-cjk; it covers Latin and Cyrillic too) and the face for ``lang`` in
    its collection (0 = JP, 2 = SC in the Debian package)."""
    if not NOTO_CJK.is_file():
        pytest.skip(
            "Noto CJK fonts not installed (make test installs Debian fonts-noto-cjk; needs root + apt)"
        )
    return NOTO_CJK, 2 if lang == "zh" else 0


def corpus_paragraphs(shared_data: Path, lang: str) -> list[str]:
    """Medical documents of ``lang`` from the shared corpus, one paragraph each (whitespace collapsed)."""
    out = []
    for line in (shared_data / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("domain") == "medical":
            out.append(re.sub(r"\s+", " ", r["text"]).strip())
    return out


@dataclass
class Book:
    lang: str
    pages: int = 0
    #: chapter title -> the text an extractor should return (title line + body paragraphs, one per line)
    chapters: dict[str, str] = field(default_factory=dict)
    #: chapter title -> 1-based page numbers of its pages
    chapter_pages: dict[str, list[int]] = field(default_factory=dict)
    #: strings that must not appear in the extracted text (headers, front and back matter)
    absent: list[str] = field(default_factory=list)
    #: page number -> body text (paragraph pieces) printed on that page, for per-page comparisons
    page_text: dict[int, str] = field(default_factory=dict)


class _Layout:
    """Pages of positioned strings (x, baseline y, size, text), then written with fpdf2."""

    def __init__(self, lang: str):
        from fpdf import FPDF

        self.lang = lang
        self.pdf = FPDF(unit="pt", format=(W, H))
        path, index = font_path(lang)
        self.pdf.add_font("noto", "", str(path), collection_font_number=index)
        self.pdf.set_font("noto", size=SIZE)
        self.pages: list[list[tuple[float, float, float, str]]] = []
        self.sections: list[tuple[int, str]] = []  # (page index, title) for the outline
        self.y = BODY_TOP
        self.page_body: dict[int, list[str]] = {}

    def width(self, text: str, size: float = SIZE) -> float:
        self.pdf.set_font_size(size)
        return self.pdf.get_string_width(text)

    def new_page(self) -> None:
        self.pages.append([])
        self.y = BODY_TOP

    def put(self, x: float, y: float, text: str, size: float = SIZE) -> None:
        self.pages[-1].append((x, y, size, text))

    def line(self, text: str, indent: float = 0.0, size: float = SIZE, body: bool = True) -> None:
        if self.y + LEADING > BODY_BOTTOM:
            self.new_page()
        self.put(MARGIN_L + indent, self.y, text, size)
        if body:
            self.page_body.setdefault(len(self.pages), []).append(text)
        self.y += LEADING * size / SIZE

    def wrap(self, text: str, first_indent: float) -> list[str]:
        """Greedy line breaking; Latin/Cyrillic words longer than 6 letters are hyphenated at the line end."""
        width = W - MARGIN_L - MARGIN_R
        lines: list[str] = []
        if self.lang in CJK:
            tokens = re.findall(r"[A-Za-z0-9.,%/+\-]+|\s|.", text)
            cur = ""
            for tok in tokens:
                avail = width - (first_indent if not lines else 0)
                if cur and self.width(cur + tok) > avail:
                    lines.append(cur.rstrip())
                    cur = tok.lstrip()
                else:
                    cur += tok
            if cur.strip():
                lines.append(cur.rstrip())
            return lines
        words = text.split(" ")
        cur = ""
        i = 0
        while i < len(words):
            w = words[i]
            avail = width - (first_indent if not lines else 0)
            cand = f"{cur} {w}" if cur else w
            if self.width(cand) <= avail:
                cur = cand
                i += 1
                continue
            if cur and w.isalpha() and len(w) >= 7:
                for k in range(len(w) - 3, 2, -1):
                    if self.width(f"{cur} {w[:k]}-") <= avail:
                        lines.append(f"{cur} {w[:k]}-")
                        words[i] = w[k:]
                        cur = ""
                        break
                else:
                    lines.append(cur)
                    cur = ""
                continue
            if not cur:  # a single word wider than the line
                lines.append(w)
                i += 1
                continue
            lines.append(cur)
            cur = ""
        if cur:
            lines.append(cur)
        return lines

    def paragraph(self, text: str) -> None:
        indent = 2 * SIZE if self.lang in CJK else 1.5 * SIZE
        for j, ln in enumerate(self.wrap(text, indent)):
            self.line(ln, indent if j == 0 else 0.0)
        self.y += 3.0

    def write(self, path: Path, headers: dict[int, tuple[str, str]], outline: bool) -> None:
        pdf = self.pdf
        for pi, items in enumerate(self.pages):
            pdf.add_page()
            if outline:
                for sp, title in self.sections:
                    if sp == pi:
                        pdf.start_section(title, level=0)
            for x, y, size, text in items:
                pdf.set_font_size(size)
                pdf.text(x, y, text)
            pdf.set_font_size(SIZE - 1)
            if pi + 1 in headers:
                left, num = headers[pi + 1]
                if left:
                    pdf.text(
                        MARGIN_L if pi % 2 else W - MARGIN_R - self.width(left, SIZE - 1), HEADER_Y, left
                    )
                if num:
                    pdf.text((W - self.width(num, SIZE - 1)) / 2, FOOTER_Y, num)
        pdf.set_title(STRINGS[self.lang]["book"])
        pdf.output(str(path))


def _roman(n: int) -> str:
    return ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x"][n - 1]


def make_book(
    path: Path,
    shared_data: Path,
    lang: str,
    *,
    chapters: int = 3,
    chars_per_chapter: int | None = None,
    outline: bool = True,
    front_back: bool = True,
    heading: str = "numbered",
) -> Book:
    """Write a textbook PDF to ``path``; returns what an extractor should find in it.

    ``heading``: ``numbered`` chapters open with "Chapter 2 Title" (or its translation), ``plain`` with the
    title alone in large type, ``none`` with no title at all (the body runs on; headers show the book title).
    """
    s = STRINGS[lang]
    paras = corpus_paragraphs(shared_data, lang)
    per_chapter = chars_per_chapter or (1500 if lang in CJK else 3500)
    lay = _Layout(lang)
    book = Book(lang)
    headers: dict[int, tuple[str, str]] = {}
    if front_back:
        lay.new_page()  # cover
        lay.put(MARGIN_L, 200, s["book"], 18)
        lay.put(MARGIN_L, 240, "Example Medical Press", 12)
        lay.new_page()  # copyright page
        lay.put(MARGIN_L, 480, s["copyright"][:60], 8)
        lay.put(MARGIN_L, 492, s["copyright"][60:], 8)
        lay.new_page()  # contents (filled in below, once chapter pages are known)
        toc_page = len(lay.pages) - 1
        lay.sections.append((toc_page, s["contents"]))
        lay.new_page()
        lay.sections.append((len(lay.pages) - 1, s["preface"]))
        lay.line(s["preface"], size=14, body=False)
        lay.y += 8
        for ln in lay.wrap(s["preface_text"], 0):
            lay.line(ln, body=False)
        for p in range(2, len(lay.pages) + 1):
            headers[p] = ("", _roman(p))
        book.absent += [s["preface_text"][:30], s["copyright"][:20]]
    k = 0
    chapter_starts = []
    for c in range(chapters):
        lay.new_page()
        start = len(lay.pages)
        title = s["titles"][c % len(s["titles"])]
        head = f"{s['chapter'].format(n=c + 1)} {title}" if heading == "numbered" else title
        chapter_starts.append((head, start))
        lay.sections.append((start - 1, head))
        if heading != "none":
            lay.line(head, size=15, body=False)
            lay.y += 10
        body = []
        while sum(map(len, body)) < per_chapter:
            body.append(paras[k % len(paras)])
            k += 1
        for para in body:
            lay.paragraph(para)
        book.chapters[head] = "\n".join([head, *body] if heading != "none" else body)
        book.chapter_pages[head] = list(range(start, len(lay.pages) + 1))
        for p in book.chapter_pages[head]:
            headers[p] = (title if p % 2 and heading != "none" else s["book"], str(p))
        book.absent.append(s["book"])
    if front_back:
        lay.new_page()
        lay.sections.append((len(lay.pages) - 1, s["refs"]))
        lay.line(s["refs"], size=14, body=False)
        refs = [
            f"{i}. Smith J, Dupont M. {t}. J Clin Med. 2020;{10 + i}:{100 + i}-{120 + i}."
            for i, t in enumerate(s["titles"], 1)
        ]
        for r in refs:
            lay.line(r, body=False)
        lay.new_page()
        lay.sections.append((len(lay.pages) - 1, s["index"]))
        lay.line(s["index"], size=14, body=False)
        terms = (
            sorted({w for p in paras[:20] for w in re.findall(r"[^\W\d_]{6,}", p)})[:24]
            if lang not in CJK
            else [t for t in s["titles"] for _ in range(6)]
        )
        for j, t in enumerate(terms):
            lay.line(f"{t}, {5 + j % 9}, {12 + j % 5}", body=False)
        for p in range(len(lay.pages) - 1, len(lay.pages) + 1):
            headers[p] = (s["book"], str(p))
        book.absent += [refs[0][:25], f"{terms[0]}, 5, 12"]
        toc = lay.pages[toc_page]
        toc.append((MARGIN_L, BODY_TOP, 14, s["contents"]))
        entries = [
            (s["preface"], 4),
            *chapter_starts,
            (s["refs"], len(lay.pages) - 1),
            (s["index"], len(lay.pages)),
        ]
        for j, (name, page) in enumerate(entries):
            dots = "." * max(
                3,
                int((W - MARGIN_L - MARGIN_R - lay.width(name) - lay.width(str(page))) / lay.width(".")) - 2,
            )
            toc.append((MARGIN_L, BODY_TOP + 24 + j * LEADING, SIZE, f"{name} {dots} {page}"))
        book.absent.append(dots[:10])
    path.parent.mkdir(parents=True, exist_ok=True)
    lay.write(path, headers, outline)
    book.pages = len(lay.pages)
    book.page_text = {p: " ".join(t) for p, t in lay.page_body.items()}
    return book


def scan_pages(src: Path, dst: Path, pages: list[int], dpi: int = 300, vertical: bool = False) -> None:
    """Render ``pages`` (1-based) of ``src`` to grey images and write them as an image-only PDF."""
    import pypdfium2 as pdfium
    from fpdf import FPDF

    doc = pdfium.PdfDocument(str(src))
    out = FPDF(unit="pt", format=(W, H))
    out.set_title(doc.get_metadata_value("Title"))  # a scanner keeps the book's metadata
    for p in pages:
        page = doc[p - 1]
        img = page.render(scale=dpi / 72, grayscale=True).to_pil()
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.add_page()
        out.image(buf, x=0, y=0, w=W, h=H)
        page.close()
    doc.close()
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.output(str(dst))


def vertical_japanese_page(path: Path, text: str) -> str:
    """One page of vertical Japanese (columns right to left), as a text PDF; returns the text printed."""
    from fpdf import FPDF

    font, index = font_path("ja")
    pdf = FPDF(unit="pt", format=(W, H))
    pdf.add_font("noto", "", str(font), collection_font_number=index)
    size = 13.0
    pdf.set_font("noto", size=size)
    pdf.add_page()
    x, y = W - MARGIN_R - size, BODY_TOP
    printed = []
    for ch in text:
        if ch.isspace():
            continue
        if y + size > BODY_BOTTOM:
            x -= size * 1.8
            y = BODY_TOP
            if x < MARGIN_L:
                break
        pdf.text(x, y + size, ch)
        printed.append(ch)
        y += size * 1.1
    pdf.output(str(path))
    return "".join(printed)


def _levenshtein(a: str, b: str, sub: int = 1) -> int:
    """Edit distance, one numpy row at a time (insertions via a running minimum)."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    aa = np.frombuffer(a.encode("utf-32-le"), dtype=np.uint32)
    bb = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    ar = np.arange(len(b) + 1)
    prev = ar.copy()
    for i, c in enumerate(aa):
        cur = np.empty_like(prev)
        cur[0] = i + 1
        cur[1:] = np.minimum(prev[1:] + 1, prev[:-1] + np.where(bb == c, 0, sub))
        cur = np.minimum.accumulate(cur - ar) + ar  # cur[j] = min(cur[j], cur[j-1] + 1)
        prev = cur
    return int(prev[-1])


def normalize(text: str) -> str:
    """NFKC (full- and half-width forms of one character are the same character: OCR reads "（" as "(")
    and whitespace folded to one space (paragraph breaks and spacing are not what CER measures here)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of ``hypothesis`` against ``reference`` (both whitespace-normalised)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    return _levenshtein(ref, hyp) / max(len(ref), 1)


def overlap(reference: str, hypothesis: str) -> tuple[float, float]:
    """``(recall, foreign)``: share of the reference's characters found in order in the hypothesis, and share
    of the hypothesis that is not the reference (from the longest common subsequence)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    indel = _levenshtein(ref, hyp, sub=2)  # substitutions cost two: insert + delete
    lcs = (len(ref) + len(hyp) - indel) / 2
    return lcs / max(len(ref), 1), 1 - lcs / max(len(hyp), 1)


# ---------------------------------------------------------------- web pages

BOILERPLATE = {
    "en": dict(
        nav=["Home", "Diseases", "Drugs", "Symptom checker", "About us", "Contact"],
        cookie="We use cookies to improve your experience on our website. By continuing to browse you accept "
        "our use of cookies.",
        accept="Accept all cookies",
        related="Related articles",
        comments="Comments",
        comment="Great article, thanks a lot! My grandmother had the same problem last year.",
        footer="© 2024 Health Info Online. All rights reserved. Privacy policy. Terms of use.",
        newsletter="Subscribe to our newsletter and get the latest health news every week.",
    ),
    "fr": dict(
        nav=["Accueil", "Maladies", "Médicaments", "Symptômes", "Qui sommes-nous", "Contact"],
        cookie="Nous utilisons des cookies pour améliorer votre expérience sur notre site. En poursuivant "
        "votre navigation, vous acceptez leur utilisation.",
        accept="Tout accepter",
        related="Articles similaires",
        comments="Commentaires",
        comment="Super article, merci beaucoup ! Ma grand-mère a eu le même problème l'année dernière.",
        footer="© 2024 Santé Info en ligne. Tous droits réservés. Politique de confidentialité.",
        newsletter="Abonnez-vous à notre lettre d'information pour recevoir chaque semaine nos actualités.",
    ),
    "es": dict(
        nav=["Inicio", "Enfermedades", "Medicamentos", "Síntomas", "Quiénes somos", "Contacto"],
        cookie="Utilizamos cookies para mejorar su experiencia en nuestro sitio web. Si continúa navegando, "
        "acepta su uso.",
        accept="Aceptar todas",
        related="Artículos relacionados",
        comments="Comentarios",
        comment="¡Excelente artículo, muchas gracias! Mi abuela tuvo el mismo problema el año pasado.",
        footer="© 2024 Salud Info en línea. Todos los derechos reservados. Política de privacidad.",
        newsletter="Suscríbase a nuestro boletín y reciba cada semana las últimas noticias de salud.",
    ),
    "ru": dict(
        nav=["Главная", "Болезни", "Лекарства", "Симптомы", "О нас", "Контакты"],
        cookie="Мы используем файлы cookie, чтобы улучшить работу сайта. Продолжая просмотр, вы соглашаетесь "
        "с их использованием.",
        accept="Принять все",
        related="Похожие статьи",
        comments="Комментарии",
        comment="Отличная статья, большое спасибо! У моей бабушки была такая же проблема в прошлом году.",
        footer="© 2024 Здоровье Инфо. Все права защищены. Политика конфиденциальности.",
        newsletter="Подпишитесь на нашу рассылку и получайте свежие новости о здоровье каждую неделю.",
    ),
    "zh": dict(
        nav=["首页", "疾病百科", "药品查询", "症状自查", "关于我们", "联系我们"],
        cookie="我们使用Cookie来改善您在本网站上的体验。继续浏览即表示您同意我们使用Cookie。",
        accept="全部接受",
        related="相关文章",
        comments="网友评论",
        comment="写得太好了，非常感谢！我奶奶去年也遇到了同样的问题。",
        footer="© 2024 健康资讯网 版权所有 隐私政策 使用条款",
        newsletter="订阅我们的电子报，每周获取最新的健康资讯。",
    ),
    "ja": dict(
        nav=["ホーム", "病気を調べる", "薬を調べる", "症状チェック", "会社概要", "お問い合わせ"],
        cookie="当サイトでは利便性向上のためにCookieを使用しています。閲覧を続けることでCookieの使用に同意したものとみなします。",
        accept="すべて同意する",
        related="関連記事",
        comments="コメント",
        comment="とても参考になりました。ありがとうございます。祖母も去年同じ症状がありました。",
        footer="© 2024 ヘルス情報オンライン 無断転載禁止 プライバシーポリシー",
        newsletter="メールマガジンに登録すると、毎週最新の健康情報をお届けします。",
    ),
}


def html_page(lang: str, title: str, paragraphs: list[str], url: str, date: str, variant: int = 0) -> str:
    """A news-site page: navigation, cookie banner, the article, sidebar, comments, newsletter, footer."""
    b = BOILERPLATE[lang]
    nav = "".join(f'<li><a href="/{i}">{x}</a></li>' for i, x in enumerate(b["nav"]))
    body = "".join(f"<p>{p}</p>\n" for p in paragraphs)
    related = "".join(f'<li><a href="/r{i}">{x}</a></li>' for i, x in enumerate(b["nav"][1:4]))
    if variant == 0:
        article = f'<main><article class="post"><h1>{title}</h1><p class="meta"><time datetime="{date}">{date}</time></p>\n{body}</article>'
        article += f'<section id="comments" class="comments"><h3>{b["comments"]}</h3><div class="comment"><p>{b["comment"]}</p></div></section></main>'
    else:
        article = f'<div id="content" class="content"><div class="entry-content"><h1 class="entry-title">{title}</h1>\n{body}</div>'
        article += f'<div class="comment-list"><h4>{b["comments"]}</h4><ol><li class="comment"><p>{b["comment"]}</p></li></ol></div></div>'
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{title} | Health</title>
<meta property="article:published_time" content="{date}T08:00:00Z">
<link rel="canonical" href="{url}"><script>window.dataLayer=[];function gtag(){{}}</script>
<style>.cookie{{position:fixed}}</style></head>
<body><header class="site-header"><div class="logo"><a href="/">Health</a></div><nav class="menu"><ul>{nav}</ul></nav></header>
<div id="cookie-banner" class="cookie-consent"><p>{b["cookie"]}</p><button>{b["accept"]}</button></div>
{article}
<aside class="sidebar"><h3>{b["related"]}</h3><ul>{related}</ul><div class="newsletter"><p>{b["newsletter"]}</p></div></aside>
<footer class="site-footer"><p>{b["footer"]}</p></footer></body></html>"""


def boilerplate_only_page(lang: str) -> str:
    """A page with navigation, a cookie banner and a footer but no article (a category or consent page)."""
    b = BOILERPLATE[lang]
    nav = "".join(f'<li><a href="/{i}">{x}</a></li>' for i, x in enumerate(b["nav"]))
    return f"""<!DOCTYPE html><html lang="{lang}"><head><title>{b["nav"][0]}</title></head><body>
<nav><ul>{nav}</ul></nav><div class="cookie-consent"><p>{b["cookie"]}</p><button>{b["accept"]}</button></div>
<footer><p>{b["footer"]}</p></footer></body></html>"""


def write_warc(
    path: Path, pages: list[tuple[str, bytes, str]], extra: bool = True, gzip: bool = True
) -> None:
    """A WARC with a warcinfo record, and per page a request, a response and a metadata record; ``pages`` are
    ``(url, body, content type)``. ``extra`` adds an image, a PDF, a 404 page and a redirect."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gzip)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "megatron-mmed tests"}))

        def response(url: str, body: bytes, ctype: str, status: str = "200 OK") -> None:
            req = w.create_warc_record(
                url,
                "request",
                http_headers=StatusAndHeaders(f"GET {url} HTTP/1.1", [("Host", "x")], is_http_request=True),
            )
            w.write_record(req)
            http = StatusAndHeaders(
                status, [("Content-Type", ctype), ("Content-Length", str(len(body)))], protocol="HTTP/1.1"
            )
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
            w.write_record(
                w.create_warc_record(
                    url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 12\n"), warc_content_type="text/plain"
                )
            )

        for url, body, ctype in pages:
            response(url, body, ctype)
        if extra:
            response("https://example.org/logo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")
            response("https://example.org/leaflet.pdf", b"%PDF-1.4\n%%EOF\n", "application/pdf")
            response(
                "https://example.org/missing",
                b"<html><body><h1>Not found</h1></body></html>",
                "text/html",
                "404 Not Found",
            )
            response("https://example.org/old", b"", "text/html", "301 Moved Permanently")
