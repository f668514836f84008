#!/usr/bin/env python3
"""Builds the tokenizer benchmark corpus: real mixed-language text from the
translated message catalogues (.mo files) this machine carries under
/usr/share/locale (GNU gettext, hundreds of languages, all scripts).

    python3 bench/make_tokenizer_corpus.py OUT.txt [--mb 12]

Every translated message (msgstr) is one line (its newlines as spaces), in a
fixed order (catalogues sorted by path), duplicates dropped, until the corpus
reaches the size asked for. Prints the size and the number of languages.
"""
import argparse
import gettext
import glob
import os
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=12.0)
    args = ap.parse_args()
    target = int(args.mb * 1e6)
    seen = set()
    langs = set()
    size = 0
    files = sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo"))
    if not files:
        sys.exit("no .mo files under /usr/share/locale: install some translated packages")
    with open(args.out, "w", encoding="utf-8") as out:
        # Round-robin over catalogues so the corpus mixes languages from the start.
        catalogs = []
        for path in files:
            try:
                with open(path, "rb") as f:
                    t = gettext.GNUTranslations(f)
            except Exception:
                continue
            msgs = [v for k, v in t._catalog.items() if k and isinstance(v, str) and v.strip()]
            if msgs:
                catalogs.append((path.split("/")[4], msgs))
        index = 0
        while size < target and catalogs:
            still = []
            for lang, msgs in catalogs:
                if index < len(msgs):
                    still.append((lang, msgs))
                    line = " ".join(msgs[index].split("\n")).strip()
                    if line and line not in seen:
                        seen.add(line)
                        out.write(line + "\n")
                        size += len(line.encode("utf-8")) + 1
                        langs.add(lang)
                        if size >= target:
                            break
            catalogs = still
            index += 1
    print(f"{args.out}: {size / 1e6:.1f} MB, {len(seen)} lines, {len(langs)} languages")
    if size < target:
        sys.exit(f"only {size} bytes of text found, wanted {target}")


main()
