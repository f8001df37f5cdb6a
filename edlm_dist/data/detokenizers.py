"""How the named text datasets are written and read as documents: each one's own tokenisation
undone (the MDLM reference's detokenisers, applied before GPT-2 tokenisation) and its files split
into documents as the MDLM reference reads them."""

from __future__ import annotations

import json
import re


def lines(text: str) -> list[str]:
    """Every line, empty ones too, with its newline (WikiText)."""
    return text.splitlines(keepends=True)


def stripped_lines(text: str) -> list[str]:
    """Every line, stripped (PTB's sentences)."""
    return [line.strip() for line in text.splitlines()]


def json_texts(text: str) -> list[str]:
    """The "text" of each JSON line (LAMBADA's passages)."""
    try:
        return [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"not JSON lines with a 'text' key ({err})") from None


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenisation (` @-@ `, spaced punctuation and brackets, `= = =` headings)."""
    text = text.replace("s '", "s'")
    for spaced, joined in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                           (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        text = text.replace(spaced, joined)
    for opening, closing in (("(", ")"), ("[", "]"), ("{", "}")):
        o, c = re.escape(opening), re.escape(closing)
        text = re.sub(rf"{o}\s*([^{c}]*?)\s*{c}", rf"{opening}\1{closing}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    for spaced, joined in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
                           (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        text = text.replace(spaced, joined)
    return text


def ptb_detokenize(text: str) -> str:
    """Undo PTB's tokenisation: contractions, `\\/`, the `N` number token (as 1), `<unk>` (as ?)."""
    for spaced, joined in ((" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (" \n ", "\n"), ("\\/", "/")):
        text = text.replace(spaced, joined)
    while " N " in text:  # overlapping matches: "N N N" needs more than one pass
        text = text.replace(" N ", " 1 ")
    return text.replace("$ 1", "$1").replace("# 1", "#1").replace("<unk>", "?")


def lambada_detokenize(text: str) -> str:
    """Straight double quotes, and the passage on a line of its own."""
    return "\n" + text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"').strip()
