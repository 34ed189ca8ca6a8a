#!/usr/bin/env bash
# Makes sure the MySQL/MariaDB server used by the tests answers.
#
# The server is the one in HELIX_TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306). When
# it is local and does not answer, the installed mariadbd is started; when none is installed,
# this says how to install one and fails.
set -euo pipefail

url="${HELIX_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}"
rest="${url#*://}"
rest="${rest#*@}"          # drop credentials
hostport="${rest%%/*}"
host="${hostport%%:*}"
port="3306"
[[ "$hostport" == *:* ]] && port="${hostport##*:}"

answers() {
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

if answers; then
    exit 0
fi

case "$host" in
    127.0.0.1|localhost|::1) ;;
    *)
        echo "error: no MySQL/MariaDB server answers at $host:$port (from HELIX_TEST_MYSQL_URL)" >&2
        exit 1
        ;;
esac

daemon=""
for candidate in /usr/sbin/mariadbd /usr/sbin/mysqld; do
    if [[ -x "$candidate" ]]; then daemon="$candidate"; break; fi
done
if [[ -z "$daemon" ]]; then
    cat >&2 <<MSG
error: no MySQL/MariaDB server answers at $host:$port and none is installed.
Install and start one, for example on Debian or Ubuntu:
    sudo apt-get install -y mariadb-server
    sudo start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
then allow passwordless root over TCP on 127.0.0.1, or point HELIX_TEST_MYSQL_URL at a server
(mysql://user:password@host:port) where that user may create and drop databases.
MSG
    exit 1
fi

echo "starting $daemon" >&2
start-stop-daemon --start --oknodo --background --exec "$daemon"
for _ in $(seq 1 60); do
    if answers; then
        echo "mysql answers at $host:$port" >&2
        exit 0
    fi
    sleep 1
done
echo "error: $daemon was started but nothing answers at $host:$port after 60 s" >&2
exit 1
