#!/bin/sh
# The chart's Redis starts here: Redis's ACL file from users.acl (files/redis-users.acl: a "user NAME RULES"
# line, indented lines joining on) with each user's password from the Secret (file NAME-password) as its
# SHA-256, on a tmpfs; then redis-server. Local mode (services/taskqueue/local.py, acl_file) makes the same
# file. POSIX sh, awk and sha256sum: busybox's (the Alpine image) or Debian's.
set -eu
conf=${REDIS_CONF_DIR:-/etc/redis}
auth=${REDIS_AUTH_DIR:-/etc/redis-auth}
run=${REDIS_RUN_DIR:-/run/redis}
umask 077
awk '{ sub(/[[:space:]]+$/, "") }
     /^[[:space:]]*(#|$)/ { next }
     /^[[:space:]]/ { sub(/^[[:space:]]+/, ""); line = line " " $0; next }
     { if (line != "") print line; line = $0 }
     END { if (line != "") print line }' "$conf/users.acl" |
  while read -r keyword name rules; do
    if [ -f "$auth/$name-password" ]; then
      digest=$(sha256sum < "$auth/$name-password" | cut -d ' ' -f 1)
      printf '%s %s %s #%s\n' "$keyword" "$name" "$rules" "$digest"
    else
      printf '%s %s %s\n' "$keyword" "$name" "$rules"
    fi
  done > "$run/users.acl"
exec redis-server "$conf/redis.conf"
