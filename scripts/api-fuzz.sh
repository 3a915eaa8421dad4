#!/usr/bin/env bash
# API fuzzing: schemathesis against the OpenAPI document of a running Thermos.
#
#   scripts/api-fuzz.sh [SECONDS]        (default 120; CI runs a short pass)
#
# Starts the test provider and `thermos serve` on loopback with a temporary
# SQLite file, imports a few connections (so that generated requests meet
# real rows as well as missing ones), then lets schemathesis generate
# requests from `/openapi.json` for SECONDS: valid and invalid bodies,
# parameters and methods, with the admin key. Fails on any 5xx answer and on
# any answer that does not match the document (status, content type,
# headers, body schema). Everything runs on 127.0.0.1 and stops at exit.
#
# Needs the debug binaries (`cargo build --workspace --bins`; THERMOS_BIN_DIR
# picks others) and Python 3 with venv: schemathesis is installed from PyPI
# into target/schemathesis-venv the first time. The report (JUnit XML and
# the failing requests as curl commands) goes to target/schemathesis/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-120}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
schemathesis_version="4.32.5"
bin_dir="${THERMOS_BIN_DIR:-target/debug}"
venv="target/schemathesis-venv"
report_dir="target/schemathesis"

for bin in thermos thermos-testprovider; do
    if [ ! -x "$bin_dir/$bin" ]; then
        echo "$bin_dir/$bin is missing: run \`cargo build --workspace --bins\` first" >&2
        exit 2
    fi
done

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
    echo "--- installing schemathesis $schemathesis_version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The test provider prints one JSON line when ready.
"$bin_dir/thermos-testprovider" --bind 127.0.0.1:0 >"$work/provider.json" 2>"$work/provider.log" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/provider.json" ] && break; sleep 0.1; done
json_field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
token_url="$(json_field "$work/provider.json" token_url)"
client_id="$(json_field "$work/provider.json" client_id)"
grants_url="$(json_field "$work/provider.json" grants_url)"
export API_FUZZ_CLIENT_SECRET
API_FUZZ_CLIENT_SECRET="$(json_field "$work/provider.json" client_secret)"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
cat >"$work/thermos.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
public_url = "$base"

[database]
url = "sqlite://$work/thermos.db"

[security]
master_key_file = "$work/thermos.key"

[[provider]]
slug = "testprovider"
token_url = "$token_url"
client_id = "$client_id"
client_secret_env = "API_FUZZ_CLIENT_SECRET"
EOF

export THERMOS_ADMIN_KEY="api-fuzz-admin-$RANDOM$RANDOM$RANDOM"
"$bin_dir/thermos" --config "$work/thermos.toml" serve >"$work/thermos.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -fsS "$base/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "$base/ready" >/dev/null || { echo "thermos did not become ready:" >&2; tail -20 "$work/thermos.log" >&2; exit 1; }

# A few real connections, with grants the provider knows (one JSON line each).
i=0
while IFS= read -r grant; do
    refresh_token="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["refresh_token"])' "$grant")"
    curl -fsS -o /dev/null -X POST "$base/v1/connections" \
        -H "Authorization: Bearer $THERMOS_ADMIN_KEY" -H 'Content-Type: application/json' \
        -d "{\"provider\":\"testprovider\",\"external_id\":\"user-$i\",\"access_token\":\"seed-access-$i\",\"refresh_token\":\"$refresh_token\",\"expires_in\":3600}"
    i=$((i + 1))
done < <(curl -fsS -X POST "$grants_url?count=3")

echo "--- schemathesis for ${seconds}s against $base/openapi.json"
mkdir -p "$report_dir"
root="$(pwd)"
status=0
# From the report directory: schemathesis keeps its cache of failing cases
# (for `st replay ID`, run there) in the working directory.
(
    cd "$report_dir"
    "$root/$venv/bin/schemathesis" --config-file "$root/scripts/schemathesis.toml" run "$base/openapi.json" \
        --header "Authorization: Bearer $THERMOS_ADMIN_KEY" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --max-time "$seconds" \
        --workers 2 \
        --request-timeout 10 \
        --suppress-health-check all \
        --report junit --report-dir . \
        --generation-database examples \
        --no-color
) || status=$?

if grep -q '"level":"ERROR"' "$work/thermos.log"; then
    echo "--- errors thermos logged during the run:" >&2
    grep '"level":"ERROR"' "$work/thermos.log" | tail -20 >&2
fi
if grep -q -- "$THERMOS_ADMIN_KEY" "$work/thermos.log"; then
    echo "!!! the admin key appeared in the log" >&2
    status=1
fi
exit "$status"
