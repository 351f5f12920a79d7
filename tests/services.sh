#!/usr/bin/env bash
# The services that the ScyllaDB + Redis tests run against: one Apache
# Cassandra 5.0 (a CQL-compatible stand-in for ScyllaDB, from Maven Central,
# on Java 17) and one redis-server (Debian), each on a free port of 127.0.0.1,
# with data in a temporary directory. Tests isolate themselves by keyspace and
# key prefix.
#
# Sourced by tests/run.sh:
#   services_start   installs what is missing, starts both (Cassandra in the
#                    background: start-up overlaps with the build)
#   services_wait    waits until both answer, then exports
#                    TALLY_TEST_CQL=127.0.0.1:PORT and
#                    TALLY_TEST_REDIS=redis://127.0.0.1:PORT/ and
#                    TALLY_TEST_CASSANDRA_CTL (stops and restarts that
#                    Cassandra in place, for the fault tests)
#   services_stop    stops both and removes their data (call it from a trap)
#
# Run alone (`bash tests/services.sh`) it starts both, prints the exports and
# keeps them running until Ctrl-C, for running single tests by hand.

CASSANDRA_VERSION="${CASSANDRA_VERSION:-5.0.6}"
SERVICES_CACHE="${SERVICES_CACHE:-$HOME/.cache/tally/services}"
# Seconds Cassandra gets to open its CQL port.
CASSANDRA_START_TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"

services_dir=""
cassandra_pid=""
redis_pid=""

# A free TCP port on 127.0.0.1 from a range that no default service uses.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "services: no free port found" >&2
  return 1
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The class path of cassandra-all, resolved by Maven once and cached.
cassandra_classpath() {
  local dir="$SERVICES_CACHE/cassandra-$CASSANDRA_VERSION"
  if [ ! -s "$dir/classpath.txt" ]; then
    echo "services: resolving org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION with Maven" >&2
    mkdir -p "$dir"
    cat >"$dir/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.tally.tests</groupId>
  <artifactId>cassandra-runner</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    (cd "$dir" && mvn -q -B -Dstyle.color=never dependency:build-classpath \
      -Dmdep.outputFile=classpath.tmp >&2) || return 1
    mv "$dir/classpath.tmp" "$dir/classpath.txt"
  fi
  cat "$dir/classpath.txt"
}

services_install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null || missing+=(maven)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "services: installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  cassandra_classpath >/dev/null
}

start_redis() {
  local port
  port="$(free_port)"
  mkdir -p "$services_dir/redis"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$services_dir/redis" \
    --save "" --appendonly no --daemonize no --logfile "$services_dir/redis.log" &
  redis_pid=$!
  TALLY_TEST_REDIS="redis://127.0.0.1:$port/"
}

start_cassandra() {
  local classpath cql_port storage_port dir
  classpath="$(cassandra_classpath)" || return 1
  cql_port="$(free_port)"
  storage_port="$(free_port)"
  dir="$services_dir/cassandra"
  mkdir -p "$dir/conf" "$dir/data" "$dir/commitlog" "$dir/saved_caches" "$dir/hints" "$dir/cdc_raw" "$dir/logs" "$dir/triggers"
  cat >"$dir/conf/cassandra.yaml" <<EOF
cluster_name: tally-tests
num_tokens: 1
initial_token: 0
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage_port"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage_port
native_transport_port: $cql_port
start_native_transport: true
data_file_directories:
  - $dir/data
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# Tests create and drop a keyspace per case: no snapshots of dropped data.
auto_snapshot: false
snapshot_before_compaction: false
# Lightweight transactions (sites, salts) on one node.
cas_contention_timeout: 2000ms
EOF
  cat >"$dir/conf/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
  # JVM flags of Cassandra's conf/jvm17-server.options (module access for
  # its off-heap and agent code), a small heap and a fast single-node start.
  local jvm=(
    -Xms1G -Xmx1G -Xss512k -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
    --add-exports java.base/sun.nio.ch=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.math=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens java.base/java.net=ALL-UNNAMED
    -Dcassandra.config="file://$dir/conf/cassandra.yaml"
    -Dlogback.configurationFile="$dir/conf/logback.xml"
    -Dcassandra.logdir="$dir/logs"
    -Dcassandra.storagedir="$dir"
    -Dcassandra-foreground=yes
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=100
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.jmx.local.port="$(free_port)"
    -Dcassandra.triggers_dir="$dir/triggers"
  )
  # The command goes in a control script, so that fault tests can stop this
  # Cassandra (SIGTERM: it drains and syncs its commit log) and start it again
  # on the same data and port: `cassandra-ctl stop`, `cassandra-ctl start`
  # (returns once the CQL port is open). The pid file follows restarts.
  {
    echo '#!/usr/bin/env bash'
    echo 'set -euo pipefail'
    printf 'pidfile=%q\n' "$dir/cassandra.pid"
    printf 'port=%q\n' "$cql_port"
    echo 'alive() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }'
    echo 'case "${1:-}" in'
    echo '  stop)'
    echo '    alive || exit 0'
    echo '    pid="$(cat "$pidfile")"; kill "$pid"'
    echo '    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.2; done'
    echo '    kill -9 "$pid" 2>/dev/null || true ;;'
    echo '  start)'
    echo '    alive && exit 0'
    printf '    setsid java %s -cp %q org.apache.cassandra.service.CassandraDaemon >>%q 2>&1 < /dev/null &\n' \
      "$(printf '%q ' "${jvm[@]}")" "$dir/conf:$classpath" "$dir/logs/stdout.log"
    echo '    echo $! >"$pidfile"'
    echo '    for _ in $(seq 1 900); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && exit 0; alive || { echo "cassandra exited" >&2; exit 1; }; sleep 0.2; done'
    echo '    echo "cassandra did not open port $port" >&2; exit 1 ;;'
    echo '  pid) cat "$pidfile" ;;'
    echo '  *) echo "usage: cassandra-ctl stop|start|pid" >&2; exit 2 ;;'
    echo 'esac'
  } >"$dir/cassandra-ctl"
  chmod +x "$dir/cassandra-ctl"
  java "${jvm[@]}" -cp "$dir/conf:$classpath" org.apache.cassandra.service.CassandraDaemon \
    >"$dir/logs/stdout.log" 2>&1 &
  cassandra_pid=$!
  echo "$cassandra_pid" >"$dir/cassandra.pid"
  TALLY_TEST_CQL="127.0.0.1:$cql_port"
  TALLY_TEST_CASSANDRA_CTL="$dir/cassandra-ctl"
  cassandra_log="$dir/logs"
}

services_start() {
  services_install
  services_dir="$(mktemp -d -t tally-services.XXXXXX)"
  start_redis
  start_cassandra
  services_started_at=$SECONDS
  echo "services: starting redis-server ($TALLY_TEST_REDIS) and Cassandra $CASSANDRA_VERSION ($TALLY_TEST_CQL)"
}

services_wait() {
  local deadline=$((SECONDS + CASSANDRA_START_TIMEOUT))
  local redis_port="${TALLY_TEST_REDIS##*:}"
  redis_port="${redis_port%/}"
  until port_open "$redis_port"; do
    if ! kill -0 "$redis_pid" 2>/dev/null; then
      echo "services: redis-server exited; its log:" >&2
      cat "$services_dir/redis.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  until port_open "${TALLY_TEST_CQL##*:}"; do
    if ! kill -0 "$cassandra_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "services: Cassandra did not open its CQL port; the end of its logs:" >&2
      tail -n 40 "$cassandra_log/stdout.log" "$cassandra_log/system.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  echo "services: ready after $((SECONDS - services_started_at)) s: TALLY_TEST_CQL=$TALLY_TEST_CQL TALLY_TEST_REDIS=$TALLY_TEST_REDIS"
  export TALLY_TEST_CQL TALLY_TEST_REDIS TALLY_TEST_CASSANDRA_CTL
}

services_stop() {
  # Only the processes this script started, by their ids (a fault test may
  # have restarted Cassandra: its pid file has the current one).
  if [ -n "$services_dir" ] && [ -s "$services_dir/cassandra/cassandra.pid" ]; then
    cassandra_pid="$(cat "$services_dir/cassandra/cassandra.pid")"
  fi
  for pid in $cassandra_pid $redis_pid; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $cassandra_pid $redis_pid; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  cassandra_pid="" redis_pid=""
  if [ -n "$services_dir" ]; then
    rm -rf "$services_dir"
    services_dir=""
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  trap services_stop EXIT
  trap 'exit 130' INT TERM
  services_start
  services_wait
  echo "export TALLY_TEST_CQL=$TALLY_TEST_CQL TALLY_TEST_REDIS=$TALLY_TEST_REDIS TALLY_TEST_CASSANDRA_CTL=$TALLY_TEST_CASSANDRA_CTL"
  echo "services: running until Ctrl-C"
  wait
fi
