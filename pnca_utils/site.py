"""The book as a static site: the executed chapters as HTML pages that work offline.

    python -m pnca_utils.book --site [--out build]      (or: make site, after make book)

`render_site` turns OUT/NN_*.ipynb into OUT/site/: one page per chapter (nbconvert's JupyterLab
HTML, through the template in `site_template/`), each with the table of contents, previous and next
links and a search box; `index.html` (the contents) and `search.html` (a search over every
chapter's text, in the browser, from `search.js`). Nothing is loaded from another host: equations
are typeset by MathJax 2 copied into OUT/site/mathjax/ from the `jupyter-server-mathjax` package,
figures are embedded in the pages, and the few lines of CSS and JavaScript are written beside them.

We use nbconvert, which executing the book already installs, rather than a site generator: the
chapters are notebooks executed by papermill, and nbconvert renders their outputs exactly as
JupyterLab shows them; what a generator would add (navigation, search) is a page of code here.
"""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent / "site_template"
MATHJAX_URL = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # relative: served by the site

CSS = """
.pnca-nav { font-family: sans-serif; font-size: 14px; margin: 12px auto; max-width: 1100px; }
.pnca-nav details { margin-bottom: 6px; }
.pnca-nav ol { margin: 4px 0 4px 18px; padding: 0; }
.pnca-nav .current { font-weight: bold; }
.pnca-nav .pager { display: flex; justify-content: space-between; gap: 12px; }
.pnca-search input { width: 60%; font-size: 16px; padding: 4px; }
.pnca-search li { margin: 8px 0; }
"""

SEARCH_JS = """
// Search the chapters' text in the browser: every query word must occur on the page.
function pncaSearch(query) {
  const words = query.toLowerCase().split(/\\s+/).filter(w => w.length > 0);
  const results = document.getElementById("results");
  results.innerHTML = "";
  if (!words.length) return;
  for (const page of PNCA_PAGES) {
    if (!words.every(w => page.text.includes(w))) continue;
    const at = page.text.indexOf(words[0]);
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = page.href;
    link.textContent = page.title;
    item.appendChild(link);
    item.appendChild(document.createElement("br"));
    item.appendChild(document.createTextNode("… " + page.text.slice(Math.max(0, at - 80), at + 120) + " …"));
    results.appendChild(item);
  }
  if (!results.children.length) results.innerHTML = "<li>No chapter contains every word.</li>";
}
"""


class SiteError(RuntimeError):
    """The site cannot be built (no executed chapters, or no MathJax to serve)."""


def chapter_title(nb, fallback: str) -> str:
    """The first markdown heading of a notebook, without its hashes."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def mathjax_folder() -> Path:
    """MathJax 2's files, as the `jupyter-server-mathjax` package ships them."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise SiteError("the site serves MathJax itself and takes it from the package jupyter-server-mathjax: "
                        "pip install jupyter-server-mathjax (it is in the project's 'book' extra)") from None
    return Path(jupyter_server_mathjax.__file__).resolve().parent / "static"


def navigation(pages: list[tuple[str, str]], current: int | None) -> dict[str, str]:
    """The HTML above and below a page: the contents (current page marked), previous and next, search.

    `pages` is [(file name, title)] in reading order; `current` the page's position (None: not a chapter).
    """
    items = "".join(f'<li{" class=current" if i == current else ""}><a href="{href}">{html.escape(title)}</a></li>'
                    for i, (href, title) in enumerate(pages))
    contents = (f'<details{" open" if current is None else ""}><summary>Contents</summary><ol>{items}</ol></details>')
    links = ['<a href="index.html">Contents</a>', '<a href="search.html">Search</a>']
    pager = []
    if current is not None:
        if current > 0:
            pager.append(f'<a href="{pages[current - 1][0]}" rel="prev">← {html.escape(pages[current - 1][1])}</a>')
        if current + 1 < len(pages):
            pager.append(f'<a href="{pages[current + 1][0]}" rel="next">{html.escape(pages[current + 1][1])} →</a>')
    pager_html = f'<div class="pager">{"".join(pager)}</div>'
    top = f'<nav class="pnca-nav">{" · ".join(links)}{contents}{pager_html}</nav>'
    return {"top": top, "bottom": f'<nav class="pnca-nav">{pager_html}</nav>'}


def _plain_text(nb) -> str:
    """A chapter's markdown, lower-cased, without markup: what the search looks in."""
    text = " ".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    return re.sub(r"\s+", " ", re.sub(r"[#*`$\\|]", " ", text)).lower()


def _page(title: str, nav: dict[str, str], body: str) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<link rel='stylesheet' href='site.css'></head>\n<body>" + nav["top"] + body + "</body></html>\n")


def render_site(out_dir: Path | str = "build") -> Path:
    """Render the executed notebooks OUT/NN_*.ipynb as the site OUT/site/; return its index page."""
    import nbformat
    from nbconvert import HTMLExporter

    out_dir = Path(out_dir)
    notebooks = sorted(out_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SiteError(f"no executed chapters in {out_dir}; run `make book` (python -m pnca_utils.book) first")
    mathjax = mathjax_folder()  # before any work: a missing package stops nothing half-written
    site = out_dir / "site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    shutil.copytree(mathjax, site / "mathjax")
    (site / "site.css").write_text(CSS, encoding="utf-8")
    chapters = [nbformat.read(path, as_version=4) for path in notebooks]
    pages = [(f"{path.stem}.html", chapter_title(nb, path.stem)) for path, nb in zip(notebooks, chapters)]
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR.parent)], template_name=TEMPLATE_DIR.name,
                            embed_images=True, mathjax_url=MATHJAX_URL)
    for i, nb in enumerate(chapters):
        # papermill's injected-parameters cell names the builder's folders; the parameters cell above it stays
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        body, _ = exporter.from_notebook_node(nb, resources={"pnca_nav": navigation(pages, i)})
        (site / pages[i][0]).write_text(body, encoding="utf-8")
    index_nav = navigation(pages, None)
    index = site / "index.html"
    index.write_text(_page("pnca-book", index_nav, "<main class='pnca-nav'><h1>pnca-book</h1>"
                           "<p>A tutorial and reproduction of ProxyNCA, ProxyNCA++ and HDML.</p></main>"),
                     encoding="utf-8")
    index_data = [{"href": href, "title": title, "text": _plain_text(nb)} for (href, title), nb in zip(pages, chapters)]
    pages_js = "const PNCA_PAGES = " + json.dumps(index_data, ensure_ascii=False) + ";\n"
    (site / "search.js").write_text(pages_js + SEARCH_JS, encoding="utf-8")
    search = ("<main class='pnca-nav pnca-search'><h1>Search the book</h1>"
              "<input id='query' placeholder='words to find' oninput='pncaSearch(this.value)'>"
              "<ol id='results'></ol></main><script src='search.js'></script>")
    (site / "search.html").write_text(_page("Search · pnca-book", index_nav, search), encoding="utf-8")
    return index
