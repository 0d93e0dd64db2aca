#!/bin/sh
# make demo: three mock upstreams and infergate from conf/ on loopback,
# a chat, a streaming chat, an embeddings request, a Responses call and
# a Messages call, then a stop.
set -eu
cd "$(dirname "$0")/.."

GW=127.0.0.1:18080
MOCK=build/release/infergate-mock
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

i=0
for name in gpu-a gpu-b gpu-c; do
    i=$((i + 1))
    "$MOCK" --listen 127.0.0.1:1808$i --name "$name" --quiet \
        --models llama-3.1-8b-instruct,qwen-2.5-7b,nomic-embed \
        --chunks 5 --chunk-interval-ms 200 >/dev/null &
    pids="$pids $!"
done
./infergate -c conf >/tmp/infergate-demo.log 2>&1 &
pids="$pids $!"

# wait until the gateway answers (at most 10 s)
n=0
until curl -s -o /dev/null "http://$GW/health"; do
    n=$((n + 1)); [ $n -gt 100 ] && { echo "gateway did not start:"; cat /tmp/infergate-demo.log; exit 1; }
    sleep 0.1
done

show() { printf '\n\033[1m== %s\033[0m\n' "$1"; }

show "GET /health"
curl -s "http://$GW/health"; echo

show "3 x POST /v1/chat/completions (round-robin; note X-Upstream-Host)"
for n in 1 2 3; do
    curl -s -D /tmp/infergate-demo.h -H 'Content-Type: application/json' \
        -d '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Hello!"}]}' \
        "http://$GW/v1/chat/completions"
    echo; grep -i -E '^x-(upstream-host|attempts|request-id)' /tmp/infergate-demo.h
done

show "POST /v1/chat/completions with stream: true (chunks arrive as they are made)"
curl -s -N -D /tmp/infergate-demo.h -H 'Content-Type: application/json' \
    -d '{"model":"llama-3.1-8b-instruct","stream":true,"messages":[{"role":"user","content":"Hi"}]}' \
    "http://$GW/v1/chat/completions"
grep -i '^x-upstream-host' /tmp/infergate-demo.h

show "POST /v1/embeddings"
curl -s -D /tmp/infergate-demo.h -H 'Content-Type: application/json' \
    -d '{"model":"nomic-embed","input":"Your text here"}' "http://$GW/v1/embeddings"
echo; grep -i '^x-upstream-host' /tmp/infergate-demo.h

show "POST /v1/responses (OpenAI Responses API), then GET /v1/responses/{id} on its host"
curl -s -D /tmp/infergate-demo.h -H 'Content-Type: application/json' \
    -d '{"model":"llama-3.1-8b-instruct","input":"Hello!"}' "http://$GW/v1/responses" \
    > /tmp/infergate-demo.resp
python3 -c 'import json; r = json.load(open("/tmp/infergate-demo.resp")); print("  id %s: %s (usage %s)" % (r["id"], r["output"][0]["content"][0]["text"], r["usage"]))'
grep -i '^x-upstream-host' /tmp/infergate-demo.h
RID=$(python3 -c 'import json; print(json.load(open("/tmp/infergate-demo.resp"))["id"])')
curl -s -o /dev/null -D /tmp/infergate-demo.h "http://$GW/v1/responses/$RID"
grep -i -E '^(HTTP|x-upstream-host)' /tmp/infergate-demo.h

show "POST /v1/messages (Anthropic Messages API)"
curl -s -D /tmp/infergate-demo.h -H 'Content-Type: application/json' -H 'anthropic-version: 2023-06-01' \
    -d '{"model":"llama-3.1-8b-instruct","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}' \
    "http://$GW/v1/messages"
echo; grep -i '^x-upstream-host' /tmp/infergate-demo.h

show "Tokens counted from the answers' usage (GET /metrics)"
curl -s "http://$GW/metrics" | grep '^infergate_tokens_total' | sed 's/^/  /'

show "Keys rotated: uses per key (from /status; keys are shown by fingerprint only)"
curl -s "http://$GW/status" | python3 -c '
import json, sys
for k in json.load(sys.stdin)["keys"]:
    print("  %-16s %-26s %-9s uses=%d" % (k["fingerprint"], k["description"], k["state"], k["uses"]))'

show "What each mock upstream saw (Authorization keys, shortened)"
for port in 18081 18082 18083; do
    curl -s "http://127.0.0.1:$port/_mock/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("  %s: %d chats/embeddings, keys %s" % (s["name"], sum(n for p, n in s["paths"].items() if p != "/v1/models"),
      {"…" + k[-4:]: n for k, n in s["keys"].items()}))'
done
rm -f /tmp/infergate-demo.h /tmp/infergate-demo.resp
echo
echo "demo done; gateway log: /tmp/infergate-demo.log"
