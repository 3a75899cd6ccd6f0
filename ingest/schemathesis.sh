#!/usr/bin/env bash
# A bounded schemathesis run against a running ingest: every operation of /openapi.json gets
# generated requests (valid and invalid), and the run fails on any 5xx.
#
#   ingest/schemathesis.sh [BASE_URL]        (default: $INGEST_URL or http://127.0.0.1:8000)
#
# Installs schemathesis into a virtualenv under the cache directory on first use
# ($BOXOFFICE_CACHE_DIR, default ~/.cache/boxoffice). Signs up a throwaway user (or signs in as
# INGEST_ADMIN_EMAIL / INGEST_ADMIN_PASSWORD when both are set, to reach the admin routes) and
# sends its access token with every request. SSE streams (they never end) and logout (it would
# revoke the token mid-run) are left out. MAX_EXAMPLES (default 20) bounds the examples per
# operation; extra arguments after the URL go to `st run`.
set -euo pipefail

VERSION="4.32.5"
BASE_URL="${1:-${INGEST_URL:-http://127.0.0.1:8000}}"
shift || true
CACHE_DIR="${BOXOFFICE_CACHE_DIR:-$HOME/.cache/boxoffice}"
VENV="$CACHE_DIR/schemathesis-$VERSION"
MAX_EXAMPLES="${MAX_EXAMPLES:-20}"

if [[ ! -x "$VENV/bin/st" ]]; then
    echo "schemathesis.sh: installing schemathesis $VERSION into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    if ! "$VENV/bin/pip" install --quiet "schemathesis==$VERSION"; then
        rm -rf "$VENV"
        echo "schemathesis.sh: installing schemathesis failed" >&2
        exit 1
    fi
fi

if ! curl -fsS --max-time 5 "$BASE_URL/healthz" >/dev/null; then
    echo "schemathesis.sh: no ingest answers at $BASE_URL/healthz (start boxoffice-ingest first)" >&2
    exit 2
fi

# An access token for the run.
token="$("$VENV/bin/python" - "$BASE_URL" <<'PY'
import json, os, sys, urllib.request, uuid
base = sys.argv[1]
def post(path, body):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)
email, password = os.environ.get("INGEST_ADMIN_EMAIL"), os.environ.get("INGEST_ADMIN_PASSWORD")
if not (email and password):
    name = "st_" + uuid.uuid4().hex[:12]
    email, password = name + "@example.com", "schemathesis-" + uuid.uuid4().hex
    post("/v1/register", {"email": email, "user_name": name, "first_name": "Schema", "last_name": "Thesis",
                          "password": password, "mobile_phone": "+4930123456"})
print(post("/v1/login", {"login": email, "password": password})["access_token"])
PY
)"

# schemathesis keeps a cache in the working directory: keep it out of the clone.
mkdir -p "$CACHE_DIR/schemathesis-work"
cd "$CACHE_DIR/schemathesis-work"
exec "$VENV/bin/st" run "$BASE_URL/openapi.json" \
    --checks not_a_server_error \
    --max-examples "$MAX_EXAMPLES" \
    --phases examples,coverage,fuzzing \
    --exclude-path-regex '/stream$' \
    --exclude-path /v1/logout \
    --header "Authorization: Bearer $token" \
    --request-timeout 20 \
    --generation-database none \
    --workers 2 \
    --no-color \
    "$@"
