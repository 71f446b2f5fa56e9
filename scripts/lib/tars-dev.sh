# Sourced by scripts that need a live tars-dev: start_tars_dev PORT NATS_PORT STANDIN_PORT
# builds it, runs it in the background with a throw-away data folder (extra settings come
# from the environment), stops it on exit, and returns once /readyz answers (60 s at most).
start_tars_dev() {
  local port=$1 nats_port=$2 standin_port=$3
  export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$(./scripts/ensure-nats-server.sh)}"
  cargo build --quiet -p tars-dev
  TARS_DEV_RUN="$(mktemp -d)"
  TARS_DEV_DATA="$TARS_DEV_RUN" TARS_DEV_PORT=$port TARS_DEV_NATS_PORT=$nats_port \
    TARS_DEV_STANDIN_PORT=$standin_port ./target/debug/tars-dev >"$TARS_DEV_RUN/tars-dev.log" 2>&1 &
  TARS_DEV_PID=$!
  trap 'kill $TARS_DEV_PID 2>/dev/null; wait $TARS_DEV_PID 2>/dev/null; rm -rf "$TARS_DEV_RUN"' EXIT
  local deadline=$((SECONDS + 60))
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 $TARS_DEV_PID 2>/dev/null; then
      echo "tars-dev did not become ready:" >&2; cat "$TARS_DEV_RUN/tars-dev.log" >&2; return 1
    fi
    sleep 0.2
  done
}
