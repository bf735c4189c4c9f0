#!/bin/sh
# The chart's Redis starts here: Redis's ACL file from users.acl (files/redis-users.acl: a "user NAME RULES"
# line, indented lines joining on) with each user's password from the Secret (file NAME-password) as its
# SHA-256, on a tmpfs; then redis-server. Local mode (services/taskqueue/local.py, acl_file) makes the same
# file. POSIX sh, awk and sha256sum: busybox's (the Alpine image) or Debian's. It fails closed: no rules, an
# empty or unreadable password, or a file without the default user off stops Redis from starting (an empty
# ACL file would leave Redis's default user open to all).
#
# Sentinel mode (redis.mode=sentinel), `start.sh redis` and `start.sh sentinel`: each pod runs a Redis and a
# Sentinel. Both ask the Sentinels (SENTINELS: host:port of each) where the primary is; when none answers (a
# first install) the first pod's Redis (FIRST_PRIMARY, host:port) is. The Redis replicates it, unless it is
# that primary; the Sentinel watches it. Each announces ANNOUNCE_HOST (its pod's DNS name). The settings come
# from the pod's env (the chart's values), so tests run these on 127.0.0.1 with ports of their own.
set -eu
conf=${REDIS_CONF_DIR:-/etc/redis}
auth=${REDIS_AUTH_DIR:-/etc/redis-auth}
run=${REDIS_RUN_DIR:-/run/redis}
role=${1:-standalone}
umask 077
die() {
  echo "redis-start.sh: $*" >&2
  exit 1
}
secret() { # the content of a password file, which must not be empty
  [ -s "$auth/$1" ] || die "no password in $auth/$1"
  cat "$auth/$1"
}
primary() { # host:port of the primary the Sentinels name, else FIRST_PRIMARY
  spass=$(secret sentinel-requirepass)
  for s in $SENTINELS; do
    answer=$(REDISCLI_AUTH=$spass timeout 3 redis-cli -h "${s%:*}" -p "${s##*:}" --no-auth-warning \
      sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null) || continue
    # shellcheck disable=SC2086 # two lines: host, port
    set -- $answer
    if [ $# -eq 2 ] && [ -n "$1" ]; then
      echo "$1:$2"
      return
    fi
  done
  echo "$FIRST_PRIMARY"
}
if [ "$role" = sentinel ]; then
  sdir=${SENTINEL_DIR:-/run/sentinel}
  at=$(primary)
  echo "redis-start.sh: sentinel watching $at as $MASTER_NAME"
  # Sentinel rewrites its file as it learns (replicas, other sentinels, the epoch): its own, on a tmpfs.
  {
    echo "port $SENTINEL_PORT"
    echo "bind ${BIND:-0.0.0.0 -::*}"
    echo "dir $sdir"
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $ANNOUNCE_HOST"
    echo "sentinel announce-port $SENTINEL_PORT"
    echo "requirepass $(secret sentinel-requirepass)"
    echo "sentinel sentinel-pass $(secret sentinel-requirepass)"
    echo "sentinel monitor $MASTER_NAME ${at%:*} ${at##*:} $QUORUM"
    echo "sentinel auth-user $MASTER_NAME sentinel"
    echo "sentinel auth-pass $MASTER_NAME $(secret sentinel-password)"
    echo "sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS"
    echo "sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS"
    echo "sentinel parallel-syncs $MASTER_NAME $PARALLEL_SYNCS"
  } >"$sdir/sentinel.conf"
  exec redis-server "$sdir/sentinel.conf" --sentinel
fi
[ -s "$conf/users.acl" ] || die "no ACL rules in $conf/users.acl"
lines=$(awk '{ sub(/[[:space:]]+$/, "") }
     /^[[:space:]]*(#|$)/ { next }
     /^[[:space:]]/ { sub(/^[[:space:]]+/, ""); line = line " " $0; next }
     { if (line != "") print line; line = $0 }
     END { if (line != "") print line }' "$conf/users.acl") || die "cannot read $conf/users.acl"
: >"$run/users.acl.new"
echo "$lines" | while read -r keyword name rules; do
  if [ -e "$auth/$name-password" ]; then
    [ -s "$auth/$name-password" ] || die "the password of user $name is empty"
    digest=$(sha256sum <"$auth/$name-password" | cut -d ' ' -f 1)
    case $digest in
      [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]*) ;;
      *) die "cannot read the password of user $name" ;;
    esac
    printf '%s %s %s #%s\n' "$keyword" "$name" "$rules" "$digest"
  else
    printf '%s %s %s\n' "$keyword" "$name" "$rules"
  fi
done >>"$run/users.acl.new"
grep -q '^user default off ' "$run/users.acl.new" || die "the ACL file has no 'user default off' line"
mv "$run/users.acl.new" "$run/users.acl"
[ "$role" = redis ] || exec redis-server "$conf/redis.conf"
# Sentinel mode: the config on the tmpfs (Sentinel has Redis rewrite it at a failover: CONFIG REWRITE), with the
# replication user's password, this pod's name, and whom to replicate.
at=$(primary)
{
  # Where it listens and keeps its files: the pod's (tests move them); Redis reads `dir` as it parses.
  grep -v -E '^(port|bind|dir|aclfile) ' "$conf/redis.conf"
  echo "port $REDIS_PORT"
  echo "bind ${BIND:-0.0.0.0 -::*}"
  echo "dir ${REDIS_DATA_DIR:-/data}"
  echo "aclfile $run/users.acl"
  echo "masterauth $(secret replica-password)"
  echo "replica-announce-ip $ANNOUNCE_HOST"
  if [ "$at" != "$ANNOUNCE_HOST:$REDIS_PORT" ]; then
    echo "replicaof ${at%:*} ${at##*:}"
  fi
} >"$run/redis.conf"
echo "redis-start.sh: $ANNOUNCE_HOST:$REDIS_PORT starts as $([ "$at" = "$ANNOUNCE_HOST:$REDIS_PORT" ] && echo primary || echo "replica of $at")"
exec redis-server "$run/redis.conf"
