#!/usr/bin/env bash
# Fetch what is new from the sources listed in feeds.txt into index/ (cron-friendly): conditional requests, only
# changed pages indexed again, failures reported one line each without stopping the run (exit 0 unless --strict).
# Builds the index first when there is none. Extra arguments go to `qa add` / `qa build` (e.g. --json, --strict).
# Environment: QA_INDEX_DIR (index), QA_SOURCES_FILE (feeds.txt), QA (the qa command, .venv/bin/qa).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
qa="${QA:-.venv/bin/qa}"
index="${QA_INDEX_DIR:-index}"
sources="${QA_SOURCES_FILE:-feeds.txt}"
if [ -f "$index/manifest.json" ]; then
    exec "$qa" add --sources-file "$sources" --index-dir "$index" --quiet "$@"
fi
exec "$qa" build --sources-file "$sources" --index-dir "$index" --quiet "$@"
