#!/usr/bin/env bash
# A one-machine Spark standalone cluster from the pip-installed pyspark: a master on
# 127.0.0.1:7077 and SPARK_WORKERS workers (one by default, 2 cores and 2g each), for running
# spark/dssvd.py as on a cluster (bench/scale.py measures one and two workers of one core).
# The pip package has no start-master.sh, so the daemons run through spark-class.
#
#   scripts/spark-standalone.sh start|stop|status
#
# Pid files and logs live in $SPARK_STANDALONE_DIR (default: <repo>/.spark, git-ignored).
# Environment: JAVA_HOME (default /usr/lib/jvm/java-17-openjdk-amd64), PYTHON (default
# <repo>/.venv/bin/python), SPARK_WORKERS (1), SPARK_WORKER_CORES (2), SPARK_WORKER_MEMORY (2g),
# SPARK_MASTER_PORT (7077), SPARK_MASTER_WEBUI_PORT (8180), SPARK_WORKER_WEBUI_PORT (8181, then
# one more per worker).
# Submit with:  spark-submit --master spark://127.0.0.1:7077 spark/dssvd.py ...
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${SPARK_STANDALONE_DIR:-$REPO/.spark}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
export JAVA_HOME="${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"
export SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PYTHON}"
HOST=127.0.0.1
PORT="${SPARK_MASTER_PORT:-7077}"
MASTER_UI="${SPARK_MASTER_WEBUI_PORT:-8180}"
WORKER_UI="${SPARK_WORKER_WEBUI_PORT:-8181}"
CORES="${SPARK_WORKER_CORES:-2}"
MEMORY="${SPARK_WORKER_MEMORY:-2g}"
WORKERS="${SPARK_WORKERS:-1}"
URL="spark://$HOST:$PORT"

spark_home() {
  "$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'
}

running() {  # running NAME -> 0 if its pid file names a live process
  local pidfile="$DIR/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

wait_for_port() {  # wait_for_port PORT SECONDS
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    if (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  return 1
}

start_daemon() {  # start_daemon NAME CLASS ARGS...
  local name="$1"; shift
  STARTED=0
  if running "$name"; then
    echo "$name already running (pid $(cat "$DIR/$name.pid"))"
    return 0
  fi
  STARTED=1
  # setsid: the daemon gets its own session, so stopping it never touches the caller.
  setsid "$SPARK_HOME/bin/spark-class" "$@" >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
  echo "$name started (pid $!, log $DIR/$name.log)"
}

stop_daemon() {  # stop_daemon NAME
  local name="$1" pidfile="$DIR/$1.pid"
  if ! running "$name"; then
    echo "$name not running"
    rm -f "$pidfile"
    return 0
  fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  rm -f "$pidfile"
  echo "$name stopped"
}

cmd="${1:-status}"
case "$cmd" in
  start)
    [[ -x "$JAVA_HOME/bin/java" ]] || { echo "error: no java at $JAVA_HOME/bin/java (set JAVA_HOME)" >&2; exit 1; }
    mkdir -p "$DIR"
    SPARK_HOME="$(spark_home)"; export SPARK_HOME
    export SPARK_LOG_DIR="$DIR" SPARK_WORKER_DIR="$DIR/work"
    start_daemon master org.apache.spark.deploy.master.Master \
      --host "$HOST" --port "$PORT" --webui-port "$MASTER_UI"
    wait_for_port "$PORT" 60 || { echo "error: master did not listen on $HOST:$PORT; see $DIR/master.log" >&2; exit 1; }
    registered="$(grep -c "Registering worker" "$DIR/master.log" 2>/dev/null || true)"
    new=0
    for i in $(seq 1 "$WORKERS"); do
      mkdir -p "$DIR/work-$i"
      start_daemon "worker-$i" org.apache.spark.deploy.worker.Worker "$URL" \
        --host "$HOST" --cores "$CORES" --memory "$MEMORY" --webui-port "$((WORKER_UI + i - 1))" --work-dir "$DIR/work-$i"
      new=$((new + STARTED))
    done
    # The workers are ready once the master logs their registration.
    deadline=$((SECONDS + 60))
    until (( $(grep -c "Registering worker" "$DIR/master.log" 2>/dev/null || true) >= ${registered:-0} + new )); do
      if ((SECONDS >= deadline)); then echo "error: a worker did not register; see $DIR/worker-*.log" >&2; exit 1; fi
      sleep 0.5
    done
    echo "cluster ready at $URL (master UI http://$HOST:$MASTER_UI)"
    ;;
  stop)
    for pidfile in "$DIR"/worker-*.pid; do
      [[ -e "$pidfile" ]] && stop_daemon "$(basename "$pidfile" .pid)"
    done
    stop_daemon master
    ;;
  status)
    status=0
    workers=()
    for pidfile in "$DIR"/worker-*.pid; do [[ -e "$pidfile" ]] && workers+=("$(basename "$pidfile" .pid)"); done
    (( ${#workers[@]} )) || workers=(worker-1)
    for name in master "${workers[@]}"; do
      if running "$name"; then echo "$name running (pid $(cat "$DIR/$name.pid"))"; else echo "$name stopped"; status=3; fi
    done
    exit $status
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 64
    ;;
esac
