#!/usr/bin/env bash
# Rebuild index/ from seeds/ (cron-friendly): builds beside the live index and swaps atomically, so a running
# `qa serve` keeps answering and picks the new index up by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
exec .venv/bin/qa build "${@:-seeds}" --index-dir "${QA_INDEX_DIR:-index}" --quiet
