"""Airflow's own secrets for the one-machine deployment (docker-compose): generated once, never in a file of the repo.

``python -m ctdenoise.orchestration.airflow_secrets DIR`` writes ``DIR/fernet_key`` (the key that
encrypts connections and variables in Airflow's database: ``AIRFLOW_FERNET_KEY`` if set, else a
new one) and ``DIR/jwt_secret`` (signs the API's tokens), each only if it is absent, so a key that
already encrypted data is kept across restarts. The Airflow services read them with
``AIRFLOW__CORE__FERNET_KEY_CMD`` and ``AIRFLOW__API_AUTH__JWT_SECRET_CMD``. Nothing secret is
printed. (On Kubernetes the Helm chart generates and keeps these secrets itself.)
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path


def fernet_key(given: str | None) -> str:
    """``given`` if it is a valid Fernet key, else a new one; a one-line error for a bad one."""
    from cryptography.fernet import Fernet

    if not given:
        return Fernet.generate_key().decode()
    try:
        Fernet(given.encode())
    except ValueError:
        raise SystemExit("error: AIRFLOW_FERNET_KEY is not a Fernet key (32 url-safe base64-encoded bytes)") from None
    return given


def write_once(path: Path, make: callable) -> bool:  # type: ignore[valid-type]
    """Write ``make()`` to ``path`` (mode 0600) unless it exists; whether it was written."""
    if path.exists() and path.stat().st_size:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(make())
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ctdenoise.orchestration.airflow_secrets DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "fernet_key": write_once(folder / "fernet_key", lambda: fernet_key(os.environ.get("AIRFLOW_FERNET_KEY"))),
        "jwt_secret": write_once(folder / "jwt_secret", lambda: secrets.token_urlsafe(48)),
    }
    for name, written in made.items():
        print(f"{folder / name}: {'generated' if written else 'kept'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
