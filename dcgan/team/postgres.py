"""A PostgreSQL cluster for the team servers: Debian's PostgreSQL binaries, a data folder, 127.0.0.1 only.

Only the MLflow and Prefect servers talk to it, from the same machine, so it never listens beyond loopback.
The roles' passwords reach clients through a libpq password file (`PGPASSFILE`, mode 600), never a URL.
As root the cluster runs as the `postgres` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dcgan.errors import DcganError

# One role and one database per server; MLflow's basic-auth app keeps its users in a database of its own.
DATABASES = {"mlflow": "mlflow", "mlflow_auth": "mlflow", "prefect": "prefect"}


def bindir() -> Path:
    """The PostgreSQL programs: `pg_config --bindir`, else Debian's /usr/lib/postgresql/<version>/bin."""
    if pg_config := shutil.which("pg_config"):
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (found / "initdb").exists():
            return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise DcganError(
            "PostgreSQL is not installed (no initdb): `apt-get install -y postgresql`, or point the team servers at "
            "your own PostgreSQL (docs/team.md)"
        )
    return Path(candidates[-1]).parent


@dataclass(frozen=True)
class Cluster:
    data: Path  # the cluster's folder; its socket lives there too
    port: int
    log: Path

    @property
    def superuser(self) -> str:
        return "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, program: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(bindir() / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise DcganError(f"PostgreSQL's {program} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def url(self, role: str, database: str) -> str:
        """A SQLAlchemy URL without a password (libpq and asyncpg read it from $PGPASSFILE)."""
        return f"{role}@127.0.0.1:{self.port}/{database}"

    def start(self, passwords: dict[str, str]) -> None:
        """Create the cluster on first use (roles and databases included), then start it; waits until it answers."""
        if os.geteuid() == 0:
            self.data.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.data, "postgres", "postgres")
            probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.data)])
            if probe.returncode:
                raise DcganError(
                    f"{self.data}: the postgres user cannot write there (a parent folder is closed to it): choose a "
                    "--postgres-data folder it can reach, e.g. under /var/lib/postgresql"
                )
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._run("initdb", "-D", str(self.data), "-U", self.superuser, "--auth-local=peer",
                      "--auth-host=scram-sha-256", "-E", "UTF8")  # fmt: skip
        self.log.touch()
        if os.geteuid() == 0:
            shutil.chown(self.log, "postgres", "postgres")
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        roles = sorted(set(DATABASES.values()))
        quoted = {role: passwords[role].replace("'", "''") for role in roles}  # a password set by hand may hold '
        statements = [
            f"DO $$BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$;\n"
            f"ALTER ROLE {role} PASSWORD '{quoted[role]}';"
            for role in roles
        ]
        self.sql("\n".join(statements))
        existing = self.sql("SELECT datname FROM pg_database", csv=True).split()
        for database, owner in DATABASES.items():
            if database not in existing:
                self.sql(f"CREATE DATABASE {database} OWNER {owner}")

    def sql(self, statements: str, csv: bool = False) -> str:
        """Run SQL as the superuser over the cluster's socket (read from stdin: nothing in the process list)."""
        args = ["-h", str(self.data), "-p", str(self.port), "-U", self.superuser, "-d", "postgres"]
        args += ["-v", "ON_ERROR_STOP=1", "-q", "-X", *(["-A", "-t"] if csv else []), "-f", "-"]
        return self._run("psql", *args, stdin=statements).stdout

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart")


def write_passfile(path: Path, port: int, passwords: dict[str, str]) -> None:
    """libpq's password file (also read by asyncpg): one line per role, mode 600."""
    lines = [f"127.0.0.1:{port}:*:{role}:{password}" for role, password in sorted(passwords.items())]
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
