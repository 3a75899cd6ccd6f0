#!/usr/bin/env bash
# A bounded schemathesis run against a running ingest: every operation of /openapi.json gets
# generated requests (valid and invalid), then sequences that follow the API's OpenAPI links
# (an event's id into an order, the order's into its payment, ...; the stateful phase), and the
# run fails on any 5xx.
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

# schemathesis keeps a cache in the working directory: keep it out of the clone.
WORK_DIR="$CACHE_DIR/schemathesis-work"
mkdir -p "$WORK_DIR"

# An access token for the run, and real resources for the operations that take an id (an event,
# a category, orders, a payment, a webhook endpoint): they go into schemathesis.toml as the ids
# of those operations, so every operation is exercised with data that exists, not only 404s.
# Admin-only resources need INGEST_ADMIN_EMAIL / INGEST_ADMIN_PASSWORD.
token="$("$VENV/bin/python" - "$BASE_URL" "$WORK_DIR/schemathesis.toml" <<'PY'
import json, os, sys, time, urllib.error, urllib.request, uuid
base, config_path = sys.argv[1], sys.argv[2]
token = None
def call(method, path, body=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        sys.exit(f"schemathesis.sh: preparing test data: {method} {path} answered {e.code}: {e.read()[:300]!r}")
email, password = os.environ.get("INGEST_ADMIN_EMAIL"), os.environ.get("INGEST_ADMIN_PASSWORD")
if not (email and password):
    name = "st_" + uuid.uuid4().hex[:12]
    email, password = name + "@example.com", "schemathesis-" + uuid.uuid4().hex
    call("POST", "/v1/register", {"email": email, "user_name": name, "first_name": "Schema",
                                  "last_name": "Thesis", "password": password, "mobile_phone": "+4930123456"})
signed_in = call("POST", "/v1/login", {"login": email, "password": password})
token = signed_in["access_token"]
ids = {"user": signed_in["user_id"]}
if signed_in.get("role") == "admin":
    ids["category"] = call("POST", "/v1/categories", {"name": "Schemathesis " + uuid.uuid4().hex[:8], "is_free": False})["id"]
    ids["event"] = call("POST", "/v1/tickets", {
        "name": "Schemathesis sale", "description": "Data for generated requests", "venue": "Hall",
        "starts_at": "2031-06-01T20:00:00Z", "price_minor": 1000, "currency": "EUR", "capacity": 100000,
        "sale_starts_at": "2020-01-01T00:00:00Z", "sale_ends_at": "2031-06-01T18:00:00Z",
        "max_per_order": 0, "max_per_user": 0})["id"]
    book = lambda: call("POST", "/v1/orders?wait=10", {"event_id": ids["event"], "number_slot": 1})
    ids["order"], ids["cancel_order"], paid = book()["id"], book()["id"], book()
    ids["pay_order"], ids["price"] = paid["id"], paid.get("amount_minor") or 1000
    ids["payment"] = call("POST", "/v1/payments", {"order_id": ids["pay_order"], "price": ids["price"],
                                                   "payment_method": "tok_success"})["id"]
ids["webhook"] = call("POST", "/v1/webhooks", {"url": "https://hooks.example.com/boxoffice"})["id"]
if "event" in ids:
    # The in-app notice of a booked order (when a notifier runs beside ingest).
    for _ in range(40):
        items = call("GET", "/v1/notifications")["items"]
        if items:
            ids["notification"] = items[0]["id"]
            break
        time.sleep(0.5)
operations = [
    ("GET /v1/users/{id}", {"path.id": ids["user"]}),
    ("PUT /v1/users/{id}", {"path.id": ids["user"]}),
    ("POST /v1/users/{id}/verify-email", {"path.id": ids["user"]}),
    ("GET /v1/webhooks/{id}", {"path.id": ids["webhook"]}),
    ("POST /v1/webhooks/{id}/enable", {"path.id": ids["webhook"]}),
    ("POST /v1/webhooks/{id}/rotate-secret", {"path.id": ids["webhook"]}),
    ("DELETE /v1/webhooks/{id}", {"path.id": ids["webhook"]}),
]
if "event" in ids:
    operations += [
        ("GET /v1/tickets/{id}", {"path.id": ids["event"]}),
        ("PUT /v1/tickets/{id}", {"path.id": ids["event"]}),
        ("PUT /v1/categories/{id}", {"path.id": ids["category"]}),
        ("POST /v1/orders", {"body.event_id": ids["event"]}),
        ("GET /v1/orders/{id}", {"path.id": ids["order"]}),
        ("POST /v1/orders/{id}/cancel", {"path.id": ids["cancel_order"]}),
        ("POST /v1/payments", {"body.order_id": ids["pay_order"], "body.price": ids["price"]}),
        ("GET /v1/payments/{id}", {"path.id": ids["payment"]}),
    ]
if "notification" in ids:
    operations.append(("POST /v1/notifications/{id}/read", {"path.id": ids["notification"]}))
with open(config_path, "w") as config:
    config.write("# Written by ingest/schemathesis.sh for one run: real ids for the operations that take one.\n")
    for name, parameters in operations:
        pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in parameters.items())
        config.write(f"\n[[operations]]\ninclude-name = {json.dumps(name)}\nparameters = {{ {pairs} }}\n")
print(token)
PY
)"

cd "$WORK_DIR"
exec "$VENV/bin/st" run "$BASE_URL/openapi.json" \
    --checks not_a_server_error \
    --max-examples "$MAX_EXAMPLES" \
    --phases examples,coverage,fuzzing,stateful \
    --exclude-path-regex '/stream$' \
    --exclude-path /v1/logout \
    --header "Authorization: Bearer $token" \
    --request-timeout 20 \
    --generation-database none \
    --workers 2 \
    --no-color \
    "$@"
