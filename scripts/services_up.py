"""Exit 0 when the PostgreSQL and Redis URLs given as arguments accept connections, 1 otherwise."""

import sys

import psycopg
import redis


def main(pg_url, redis_url):
    try:
        psycopg.connect(pg_url.replace("postgres://", "postgresql://", 1), connect_timeout=3).close()
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:  # any failure means "not available"; the message says which
        print(f"services not available: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
