#!/bin/sh
# The chart's Redis starts here: Redis's ACL file from users.acl (files/redis-users.acl: a "user NAME RULES"
# line, indented lines joining on) with each user's password from the Secret (file NAME-password) as its
# SHA-256, on a tmpfs; then redis-server. Local mode (services/taskqueue/local.py, acl_file) makes the same
# file. POSIX sh, awk and sha256sum: busybox's (the Alpine image) or Debian's. It fails closed: no rules, an
# empty or unreadable password, or a file without the default user off stops Redis from starting (an empty
# ACL file would leave Redis's default user open to all).
set -eu
conf=${REDIS_CONF_DIR:-/etc/redis}
auth=${REDIS_AUTH_DIR:-/etc/redis-auth}
run=${REDIS_RUN_DIR:-/run/redis}
umask 077
die() {
  echo "redis-start.sh: $*" >&2
  exit 1
}
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
exec redis-server "$conf/redis.conf"
