"""A steady stream of registrations and profile changes in the legacy tables.

It deliberately mixes changes the feeds carry (name, city, state, marketing opt-out)
with changes they do not (login counters, last-seen times), because the second kind
must not move a row into the next window (decision 3).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import psycopg

FIRST = ["Aniyah", "Jonas", "Maria", "Kwame", "Li", "Sofía", "Olek", "Zoë", "Renée", "Ahmed"]
LAST = ["Shanahan", "Borg", "Camilleri", "O'Brien", "Müller", "Nowak", "Dubois, Jr.", "Grech"]
CITIES = [("Malta", "Valletta"), ("Germany", "Berlin"), ("Brazil", "São Paulo"), ("Japan", "Tokyo"),
          ("Liberia", "Monrovia"), ("Canada", "Toronto")]
LANGS = ["en-US", "de", "pt-BR", "ja", "en", "fr-CA", "mt"]
ZONES = ["Europe/Malta", "Europe/Berlin", "America/Sao_Paulo", "Asia/Tokyo", "Africa/Monrovia"]


@dataclass
class Workload:
    dsn: str
    rate: float = 20.0  # statements per second
    seed: int = 7
    rng: random.Random = field(init=False)
    statements: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def register(self, cur: psycopg.Cursor) -> int:
        r = self.rng
        country, city = r.choice(CITIES)
        row = cur.execute(
            "INSERT INTO users (fname, lname, sex, country_name, city, last_ip, lang, tz, dob, affiliate_code,"
            " reg_source, reg_ua, email, phone) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING user_id",
            (r.choice(FIRST), r.choice(LAST), r.choice("MF"), country, city,
             f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}", r.choice(LANGS), r.choice(ZONES),
             f"{r.randrange(1940, 2006)}-{r.randrange(1, 13):02d}-{r.randrange(1, 29):02d}",
             r.choice(["aff42", "spring", None]), r.choice(["Google", "Tik-Tok", "Email", None]),
             "Mozilla/5.0 (X11; Linux x86_64)", f"user{r.randrange(10**9)}@example.com",
             f"+356 {r.randrange(10**7, 10**8)}"),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def change(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        kind = r.random()
        if kind < 0.35:
            cur.execute("UPDATE users SET login_count = login_count + 1, last_seen = now() AT TIME ZONE "
                        "'Europe/Malta' WHERE user_id = (SELECT user_id FROM users ORDER BY random() LIMIT 1)")
        elif kind < 0.7:
            country, city = r.choice(CITIES)
            cur.execute("UPDATE users SET city = %s, country_name = %s WHERE user_id = "
                        "(SELECT user_id FROM users ORDER BY random() LIMIT 1)", (city, country))
        elif kind < 0.85:
            cur.execute("UPDATE users SET state = %s WHERE user_id = (SELECT user_id FROM users ORDER BY random() "
                        "LIMIT 1)", (r.choice([0, 0, 1]),))
        else:
            cur.execute("UPDATE users SET no_marketing = NOT no_marketing WHERE user_id = "
                        "(SELECT user_id FROM users ORDER BY random() LIMIT 1)")

    def step(self, cur: psycopg.Cursor) -> None:
        if self.statements < 5 or self.rng.random() < 0.3:
            self.register(cur)
        else:
            self.change(cur)
        self.statements += 1

    def run(self, stop: threading.Event) -> None:
        """Run at ``rate`` statements/s (autocommit: one source transaction each) until ``stop``."""
        interval = 1.0 / self.rate
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
            next_at = time.monotonic()
            while not stop.is_set():
                self.step(cur)
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))
