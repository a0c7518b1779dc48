"""Numbered SQL migrations, applied in order, each once, under an advisory lock.

`txguard db migrate` runs this with an administrative connection (DATABASE_URL): it applies what is new,
checks that applied files were not edited since, gives the service's login role the privileges the
functions need in this database and nothing anywhere else, and seeds the default rule set when there is none.

Roles are cluster-wide, databases are not. So each database has a group role of its own (`<database>_access`)
that holds every privilege the functions have in it, and the only CONNECT on the database; its login
(`<database>_app`, unless TXGUARD_DB_ROLE or the service secret names another) is that group's only member.
Both carry a marker (COMMENT ON ROLE, `txguard: login of database <name>`) naming their database, and a
migrate run refuses a role that belongs to another database instead of taking it over.

Migrations used to grant to the one group role every database shared, `txguard_service`; a migration may
still do so. After the migrations, a run moves whatever `txguard_service` holds in this database to the
database's own group role, then grants SERVICE_GRANTS, so `txguard_service` keeps nothing here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed number: every migrate run on the same database serialises on it.
_ADVISORY_LOCK_KEY = 0x7478_6775_6172_6401

# Every table the functions use is listed here, with the privileges they need and nothing more; a new
# table gets its line in the same change as the migration that creates it. Granted to the database's own
# group role by every migrate run (a table not created yet is skipped). tests/integration/test_migrations.py
# fails while a table of schema public is in neither SERVICE_GRANTS nor NOT_FOR_THE_SERVICE.
SERVICE_GRANTS: dict[str, tuple[str, ...]] = {
    "transactions": ("SELECT", "INSERT"),
    "account_stats": ("SELECT", "INSERT", "UPDATE"),
    "rule_sets": ("SELECT",),
    "alert_outbox": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "account_daily": ("SELECT", "INSERT", "UPDATE"),
    "labels": ("SELECT", "INSERT"),
    "merchant_label_daily": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "merchant_label_steps": ("SELECT",),
    "merchant_daily": ("SELECT", "INSERT", "UPDATE"),
    "account_merchants": ("SELECT", "INSERT", "UPDATE"),
    "console_rollup_state": ("SELECT", "INSERT", "UPDATE"),
    "console_hourly": ("SELECT", "INSERT", "UPDATE"),
    "console_rule_daily": ("SELECT", "INSERT", "UPDATE"),
    "console_label_hourly": ("SELECT", "INSERT", "UPDATE"),
    "console_rule_label_daily": ("SELECT", "INSERT", "UPDATE"),
    "review_claims": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "account_currency_stats": ("SELECT", "INSERT", "UPDATE"),
    # TrainFunction registers candidates and, with AutoPromote, promotes one (a detector version with it).
    "model_versions": ("SELECT", "INSERT", "UPDATE"),
    "detector_versions": ("SELECT", "INSERT"),
    # The API's /rules/{rule_id}/snoozes: snooze (insert or replace), list, lift; every change recorded.
    "rule_snoozes": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "rule_snooze_changes": ("SELECT", "INSERT"),
    # Lists are never deleted (their audit refers to them); items are (the table holds the current ones only).
    "lists": ("SELECT", "INSERT", "UPDATE"),
    "list_items": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "list_changes": ("SELECT", "INSERT"),
    "account_values": ("SELECT", "INSERT", "UPDATE"),
}
# Tables of schema public the functions never touch.
NOT_FOR_THE_SERVICE = frozenset({"schema_migrations"})

# The group role every database shared before each had its own. Migrations 0001 and 0003 grant to it; a
# migrate run moves what it holds in the database to the database's own group role.
SHARED_ROLE = "txguard_service"
LOGIN_SUFFIX = "_app"
GROUP_SUFFIX = "_access"
_MARKER = "txguard: {kind} of database {database}"
_MARKER_PATTERN = re.compile(r"txguard: (login|group) of database (.+)", re.DOTALL)
# PostgreSQL truncates identifiers longer than NAMEDATALEN - 1 bytes; a longer name is shortened here, with
# a digest of the database name, so that two long database names never share a role.
_MAX_NAME_BYTES = 63


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Exception):
    pass


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("txguard.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def migrate(admin_dsn: str, service_role: str | None = None, service_password: str | None = None) -> list[Migration]:
    """Apply pending migrations and (re)grant the service's roles. Returns the migrations applied now.

    `service_role` is the login the functions use; None: `service_login_role(<database>)`. With a
    `service_password` the login's password is set, sent as a SCRAM-SHA-256 verifier, never in clear.

    Raises MigrationError, applying nothing, when the login or the group role belongs to another database,
    is a superuser or the administrator itself; and when an applied migration file was edited.
    """
    conn = psycopg2.connect(admin_dsn, application_name="txguard-migrate", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
            cur.execute("SELECT current_database()")
            (database,) = cur.fetchone()
        try:
            roles = _claim_roles(conn, database, service_role or service_login_role(database), service_password)
            applied = _apply_pending(conn)
            _grant_service_privileges(conn, database, roles)
            _seed_default_rules(conn)
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
        return applied
    finally:
        conn.close()


def service_login_role(database: str) -> str:
    """The default login of the functions in `database`: `<database>_app` (`txguard_app` for `txguard`)."""
    return role_name(database, LOGIN_SUFFIX)


def service_group_role(database: str) -> str:
    """The group role holding the functions' privileges in `database`: `<database>_access`."""
    return role_name(database, GROUP_SUFFIX)


def role_name(database: str, suffix: str) -> str:
    """`<database><suffix>`, shortened to PostgreSQL's 63 bytes with a digest of the name when longer."""
    name = database + suffix
    if len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    tail = f"_{hashlib.sha256(database.encode()).hexdigest()[:8]}{suffix}"
    head = database.encode()[: _MAX_NAME_BYTES - len(tail.encode())].decode(errors="ignore")
    return head + tail


def _apply_pending(conn: psycopg2.extensions.connection) -> list[Migration]:
    with conn.cursor() as cur:
        cur.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""
        )
        cur.execute("SELECT version, checksum FROM schema_migrations")
        done = dict(cur.fetchall())
    applied = []
    for migration in available_migrations():
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}.sql was edited after it was applied; "
                    "add a new migration instead"
                )
            continue
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            conn.commit()
        except Exception:
            conn.rollback()
            raise
        finally:
            conn.autocommit = True
        applied.append(migration)
    return applied


@dataclass(frozen=True)
class ServiceRoles:
    login: str
    group: str


@dataclass(frozen=True)
class _RoleFacts:
    superuser: bool
    kind: str | None  # "login" or "group" when the role carries a txguard marker
    database: str | None  # the database its marker names
    database_exists: bool
    shared_member: bool  # a member of SHARED_ROLE: a login made before databases had roles of their own
    other_groups: tuple[tuple[str, str], ...]  # (group role, database) of live databases it is a member of


def _claim_roles(conn: psycopg2.extensions.connection, database: str, login: str, password: str | None) -> ServiceRoles:
    """Create or adopt the database's login and group role, in one transaction, or refuse and change nothing."""
    roles = ServiceRoles(login, service_group_role(database))
    if login == roles.group:
        raise MigrationError(f"role {login!r} is the group role of database {database!r}, not a login")
    # Two runs on two databases may race for the same role (roles are cluster-wide, the advisory lock is
    # not): the loser's CREATE or ALTER ROLE fails once the winner commits; its second attempt sees the marker.
    for attempt in (1, 2):
        try:
            with conn, conn.cursor() as cur:
                _adopt(cur, roles.group, "group", database)
                _adopt(cur, login, "login", database)
                if password is not None:
                    verifier = psycopg2.extensions.encrypt_password(password, login, conn, "scram-sha-256")
                    cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(login)), (verifier,))
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(roles.group), sql.Identifier(login)))
                # Only this database's login may hold its privileges.
                cur.execute(
                    "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
                    "JOIN pg_roles m ON m.oid = a.member WHERE g.rolname = %s AND m.rolname <> %s",
                    (roles.group, login),
                )
                revoke = sql.SQL("REVOKE {} FROM {}")
                for (member,) in cur.fetchall():
                    cur.execute(revoke.format(sql.Identifier(roles.group), sql.Identifier(member)))
                login_facts = _facts(cur, login)
                if login_facts is not None and login_facts.shared_member:
                    cur.execute(revoke.format(sql.Identifier(SHARED_ROLE), sql.Identifier(login)))
            return roles
        except (psycopg2.errors.DuplicateObject, psycopg2.errors.UniqueViolation, psycopg2.errors.InternalError_):
            # InternalError_: "tuple concurrently updated", the loser's ALTER ROLE.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _adopt(cur: psycopg2.extensions.cursor, role: str, kind: str, database: str) -> None:
    """Create `role` for `database`, or take it when it is already ours, orphaned or a login of before roles
    were per database; raise MigrationError for anything else."""
    ident = sql.Identifier(role)
    facts = _facts(cur, role)
    if facts is None:
        cur.execute(sql.SQL("CREATE ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE").format(ident))
    else:
        _refuse_unless_ours(cur, role, kind, database, facts)
    # Writing the role's row makes a concurrent claim of the same role wait for this transaction, then fail.
    cur.execute(sql.SQL("ALTER ROLE {} " + ("LOGIN" if kind == "login" else "NOLOGIN")).format(ident))
    cur.execute(sql.SQL("COMMENT ON ROLE {} IS %s").format(ident), (_MARKER.format(kind=kind, database=database),))


def _refuse_unless_ours(
    cur: psycopg2.extensions.cursor, role: str, kind: str, database: str, facts: _RoleFacts
) -> None:
    cur.execute("SELECT current_user")
    (admin,) = cur.fetchone()
    if role == admin or facts.superuser:
        raise MigrationError(f"role {role!r} is a superuser or the administrator running the migration")
    if facts.kind is not None and facts.database_exists and (facts.database, facts.kind) != (database, kind):
        raise MigrationError(
            f"role {role!r} is the {facts.kind} role of database {facts.database!r}; database {database!r} "
            "needs a role of its own (set TXGUARD_DB_ROLE / DatabaseServiceRole to another name)"
        )
    for group, other in facts.other_groups:
        if other != database:
            raise MigrationError(
                f"role {role!r} is a member of {group!r}, the group role of database {other!r}; "
                f"database {database!r} needs a role of its own"
            )
    if facts.kind is None and not (kind == "login" and facts.shared_member):
        marker = sql.SQL("COMMENT ON ROLE {} IS {}").format(
            sql.Identifier(role), sql.Literal(_MARKER.format(kind=kind, database=database))
        )
        raise MigrationError(
            f"role {role!r} exists and is not a txguard role; to give it to database {database!r}, run "
            f"{marker.as_string(cur)}"
        )


def _facts(cur: psycopg2.extensions.cursor, role: str) -> _RoleFacts | None:
    cur.execute(
        """SELECT r.rolsuper, shobj_description(r.oid, 'pg_authid'),
                  EXISTS (SELECT FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
                          WHERE a.member = r.oid AND g.rolname = %s),
                  ARRAY(SELECT g.rolname || ' ' || shobj_description(g.oid, 'pg_authid')
                        FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
                        WHERE a.member = r.oid AND shobj_description(g.oid, 'pg_authid') LIKE 'txguard: group %%')
           FROM pg_roles r WHERE r.rolname = %s""",
        (SHARED_ROLE, role),
    )
    row = cur.fetchone()
    if row is None:
        return None
    superuser, comment, shared_member, memberships = row
    kind, owner = _marker(comment)
    other_groups = []
    for entry in memberships:
        group, _, group_comment = entry.partition(" ")
        group_database = _marker(group_comment)[1]
        if group_database is not None and _database_exists(cur, group_database):
            other_groups.append((group, group_database))
    return _RoleFacts(
        superuser=superuser,
        kind=kind,
        database=owner,
        database_exists=owner is not None and _database_exists(cur, owner),
        shared_member=shared_member,
        other_groups=tuple(other_groups),
    )


def _marker(comment: str | None) -> tuple[str | None, str | None]:
    match = _MARKER_PATTERN.fullmatch(comment or "")
    return (match.group(1), match.group(2)) if match else (None, None)


def _database_exists(cur: psycopg2.extensions.cursor, name: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT FROM pg_database WHERE datname = %s)", (name,))
    return bool(cur.fetchone()[0])


def _grant_service_privileges(conn: psycopg2.extensions.connection, database: str, roles: ServiceRoles) -> None:
    """The group role gets what the functions need here, and is the only one PUBLIC's defaults let in."""
    group = sql.Identifier(roles.group)
    db = sql.Identifier(database)
    with conn, conn.cursor() as cur:
        # What migrations granted to the shared role moves to this database's own group role.
        cur.execute(
            """SELECT c.relkind = 'S', c.oid::regclass::text,
                      array_agg(DISTINCT a.privilege_type ORDER BY a.privilege_type)
               FROM pg_class c, aclexplode(c.relacl) a, pg_roles r
               WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = r.oid AND r.rolname = %s
               GROUP BY c.oid""",
            (SHARED_ROLE,),
        )
        for is_sequence, relation, privileges in cur.fetchall():
            cur.execute(
                sql.SQL("GRANT {} ON {} {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                    sql.SQL("SEQUENCE" if is_sequence else "TABLE"),
                    sql.SQL(relation),  # regclass text: already quoted where needed
                    group,
                )
            )
        cur.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (SHARED_ROLE,))
        if cur.fetchone()[0]:
            shared = sql.Identifier(SHARED_ROLE)
            for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
                cur.execute(sql.SQL("REVOKE ALL ON ALL {} IN SCHEMA public FROM {}").format(sql.SQL(kind), shared))
            cur.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(shared))
            cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, shared))
        for table, privileges in SERVICE_GRANTS.items():
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
            if cur.fetchone()[0]:
                cur.execute(
                    sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier("public", table), group
                    )
                )
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(group))
        # PostgreSQL 14 and older let every role create in schema public.
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        # Every role may connect to a new database: only this database's group role may connect to this one.
        cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(db))
        cur.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(db, sql.Identifier(roles.login)))
        cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, group))
        # A REVOKE by a role that does not own the object (or hold the grant option) only warns.
        cur.execute(
            "SELECT has_schema_privilege('public', 'public', 'CREATE'), "
            "has_database_privilege('public', current_database(), 'CONNECT')"
        )
        create, connect = cur.fetchone()
        if create or connect:
            what = " and ".join(w for w, kept in (("CREATE on schema public", create), ("CONNECT", connect)) if kept)
            raise MigrationError(
                f"PUBLIC keeps {what} in database {database!r}: the migrating role may not revoke it; "
                "run the migration as the owner of the database and of schema public"
            )


def _seed_default_rules(conn: psycopg2.extensions.connection) -> None:
    # Imported here so that migrating does not depend on the rule language at import time.
    from txguard.storage.rule_sets import seed_default_rule_set

    seed_default_rule_set(conn)


def drop_service_roles(admin_dsn: str, database: str) -> list[str]:
    """Drop the login and group role of `database` once it is dropped (roles outlive DROP DATABASE).

    Returns the roles dropped; none while the database exists.
    """
    conn = psycopg2.connect(admin_dsn, application_name="txguard-migrate", connect_timeout=10)
    dropped = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            if _database_exists(cur, database):
                return []
            cur.execute(
                "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') IN (%s, %s)",
                tuple(_MARKER.format(kind=kind, database=database) for kind in ("login", "group")),
            )
            for (role,) in cur.fetchall():
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                dropped.append(role)
    finally:
        conn.close()
    return dropped
