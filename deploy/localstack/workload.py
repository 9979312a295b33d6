"""A steady stream of changes in every legacy table, as a running casino would make them.

Each step is one autocommitted statement (one source transaction), chosen at random
with weights that look like real traffic: many logins and payments, fewer profile edits,
now and then a new bonus or tournament. It deliberately mixes changes the feeds carry
with changes they do not (login counters, last-seen times, PSP references, wagering
settings), because the second kind must not move a row into the next window
(decision 3). Multi-row business actions (rotate a remember-me token, place a bet
with its selections, settle it) are single statements with data-modifying CTEs, so
they reach Debezium as one transaction, as the application would write them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg

FIRST = ["Aniyah", "Jonas", "Maria", "Kwame", "Li", "Sofía", "Olek", "Zoë", "Renée", "Ahmed"]
LAST = ["Shanahan", "Borg", "Camilleri", "O'Brien", "Müller", "Nowak", "Dubois, Jr.", "Grech"]
CITIES = [("Malta", "Valletta"), ("Germany", "Berlin"), ("Brazil", "São Paulo"), ("Japan", "Tokyo"),
          ("Liberia", "Monrovia"), ("Canada", "Toronto")]
LANGS = ["en-US", "de", "pt-BR", "ja", "en", "fr-CA", "mt", "de_AT.UTF-8"]
ZONES = ["Europe/Malta", "Europe/Berlin", "America/Sao_Paulo", "Asia/Tokyo", "Africa/Monrovia", "europe/london"]
CURRENCIES = ["EUR", "EUR", "USD", "BRL", "JPY", "CAD", "BTC", "usdt", "ETH"]
PROVIDERS = ["VISA", "Mastercard", "Skrill", "Neteller", "Pix", "Coinspaid"]
SEGMENTS = ["slots", "live", "sports", "high-roller", "weekend", "crypto"]
SPORTS = [("fb", "Football"), ("tns", "Tennis"), ("bb", "Basketball"), ("vlbl", "Volleyball")]
TEAMS = ["Valletta FC", "Hibernians", "Birkirkara", "Floriana", "Sliema Wanderers", "Hamrun Spartans"]
MARKETS = ["Match Result", "Over/Under 2.5", "Both Teams To Score", "Handicap -1"]
EVENT_STATES = ["PRE", "LIVE", "SUSP", "FT", "CLOSED", "DELAY", "CANC"]
GAMES = [("pariplay-lucky-lion", "Lucky Lion", "PARIPLAY"), ("netent-starburst", "Starburst", "NetEnt"),
         ("evo-lightning-roulette", "Lightning Roulette", "Evolution"), ("pp-sweet-bonanza", "Sweet Bonanza",
         "Pragmatic Play"), ("play-n-go-book-of-dead", "Book of Dead", "Play'n GO")]  # casino block

_RANDOM_USER = "(SELECT user_id FROM users ORDER BY random() LIMIT 1)"
_MALTA_NOW = "(now() AT TIME ZONE 'Europe/Malta')"


@dataclass
class Workload:
    dsn: str
    rate: float = 20.0  # statements per second
    seed: int = 7
    rng: random.Random = field(init=False)
    statements: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.actions: list[tuple[float, Callable[[psycopg.Cursor], None]]] = [
            (10, self.register), (8, self.edit_profile), (7, self.touch_user), (4, self.toggle_state),
            (3, self.edit_custom), (10, self.pay), (8, self.progress_payment), (8, self.move_balance),
            (10, self.login), (4, self.rotate_token), (5, self.grant_bonus), (4, self.use_bonus),
            (1, self.revoke_bonus), (1, self.add_bonus), (1, self.add_tournament), (2, self.add_event),
            (4, self.advance_event), (6, self.place_bet), (4, self.settle_bet),
        ]
        self.actions += self.casino_steps()  # the casino block below

    # -- setup ------------------------------------------------------------------------

    def seed_reference_data(self, cur: psycopg.Cursor) -> None:
        """A few rows every action can refer to (idempotent)."""
        for _ in range(3):
            self.register(cur)
        for code, title in [("WELCOME100", "Welcome Bonus"), ("FS50", "50 Free Spins"), ("RELOAD25", "Reload 25%")]:
            cur.execute("INSERT INTO bonus_catalogue (bonus_code, title, wagering) VALUES (%s, %s, 35) "
                        "ON CONFLICT DO NOTHING", (code, title))
        self.add_tournament(cur)
        for _ in range(3):
            self.add_event(cur)
        self.seed_games(cur)

    # -- players and contacts --------------------------------------------------------

    def register(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        country, city = r.choice(CITIES)
        cur.execute(
            "INSERT INTO users (fname, lname, sex, country_name, city, last_ip, lang, tz, dob, affiliate_code,"
            " reg_source, reg_ua, email, phone, vip_level, segments)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (r.choice(FIRST), r.choice(LAST), r.choice("MF"), country, city,
             f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}", r.choice(LANGS), r.choice(ZONES),
             f"{r.randrange(1940, 2006)}-{r.randrange(1, 13):02d}-{r.randrange(1, 29):02d}",
             r.choice(["aff42", "spring", None]), r.choice(["Google", "Tik-Tok", "Email", None]),
             "Mozilla/5.0 (X11; Linux x86_64)", f"user{r.randrange(10**9)}@example.com",
             f"+356 {r.randrange(10**7, 10**8)}", 0, r.sample(SEGMENTS, r.randrange(0, 3))))

    def edit_profile(self, cur: psycopg.Cursor) -> None:
        country, city = self.rng.choice(CITIES)
        cur.execute(f"UPDATE users SET city = %s, country_name = %s, email_ok_at = coalesce(email_ok_at, "
                    f"{_MALTA_NOW}) WHERE user_id = {_RANDOM_USER}", (city, country))

    def touch_user(self, cur: psycopg.Cursor) -> None:
        cur.execute(f"UPDATE users SET login_count = login_count + 1, last_seen = {_MALTA_NOW} "
                    f"WHERE user_id = {_RANDOM_USER}")

    def toggle_state(self, cur: psycopg.Cursor) -> None:
        if self.rng.random() < 0.5:
            cur.execute(f"UPDATE users SET state = %s WHERE user_id = {_RANDOM_USER}", (self.rng.choice([0, 0, 1]),))
        else:
            cur.execute(f"UPDATE users SET no_marketing = NOT no_marketing WHERE user_id = {_RANDOM_USER}")

    def edit_custom(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        cur.execute(f"UPDATE users SET vip_level = %s, kyc_status = %s, segments = %s, lifetime_value = "
                    f"coalesce(lifetime_value, 0) + %s, last_deposit_at = {_MALTA_NOW} WHERE user_id = {_RANDOM_USER}",
                    (r.randrange(0, 6), r.choice(["pending", "verified", "rejected"]),
                     r.sample(SEGMENTS, r.randrange(0, 4)), Decimal(r.randrange(100, 100000)) / 100))

    # -- money ------------------------------------------------------------------------

    def pay(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        ccy = r.choice(CURRENCIES)
        amount = Decimal(r.randrange(1, 10**6)) / (10**8 if ccy.upper() in ("BTC", "ETH") else 100)
        cur.execute(
            "INSERT INTO payments (user_id, amount, ccy, kind, pay_type, provider, affiliate, account_no,"
            " masked_pan, note, psp_ref) SELECT user_id, %s, %s, %s, %s, %s, %s, 'W-' || user_id || '-' || %s,"
            " %s, %s, %s FROM users ORDER BY random() LIMIT 1",
            (amount, ccy, r.choice("DDDW"), r.choice(["real", "real", "bonus", "cashback", "test"]),
             r.choice(PROVIDERS), r.choice(["aff42", None]), ccy.upper(),
             f"4916-****-****-{r.randrange(1000, 9999)}", r.choice([None, "first deposit", 'note "quoted", ok']),
             f"psp-{r.randrange(10**9)}"))

    def progress_payment(self, cur: psycopg.Cursor) -> None:
        cur.execute(
            "UPDATE payments SET state = CASE state WHEN 'pending' THEN 'processing' "
            "WHEN 'processing' THEN (CASE WHEN random() < 0.85 THEN 'ok' ELSE 'failed' END) ELSE state END, "
            "psp_ref = 'psp-' || floor(random() * 1e9)::bigint "
            "WHERE pay_id = (SELECT pay_id FROM payments WHERE state IN ('pending', 'processing') "
            "ORDER BY random() LIMIT 1)")

    def move_balance(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        ccy = r.choice(CURRENCIES).upper()
        delta = Decimal(r.randrange(-5000, 10000)) / 100
        cur.execute(
            "INSERT INTO accounts (account_no, user_id, acc_type, balance, ccy) "
            "SELECT 'W-' || user_id || '-' || %s, user_id, %s, greatest(%s, 0), %s FROM users "
            "ORDER BY random() LIMIT 1 "
            "ON CONFLICT (account_no) DO UPDATE SET balance = greatest(accounts.balance + %s, 0)",
            (ccy, r.choice(["REAL", "REAL", "BONUS"]), delta, ccy, delta))

    # -- logins -----------------------------------------------------------------------

    def login(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        cur.execute(
            "INSERT INTO login_history (user_id, ip_addr, aff, utm_source, agent, site, ok) "
            f"VALUES ({_RANDOM_USER}, %s, %s, %s, %s, %s, %s)",
            (r.choice([f"10.0.{r.randrange(256)}.{r.randrange(1, 255)}", "2001:db8::42"]),
             r.choice(["aff42", None]), r.choice(["Email", "Push", "Google", None]),
             "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1)", r.choice(["spacevegas.com", "sv-mirror1.com"]),
             r.random() < 0.9))

    def rotate_token(self, cur: psycopg.Cursor) -> None:
        cur.execute(
            f"WITH u AS (SELECT user_id FROM users ORDER BY random() LIMIT 1), "
            f"old AS (DELETE FROM remember_tokens WHERE user_id = (SELECT user_id FROM u)) "
            f"INSERT INTO remember_tokens (user_id, expires) SELECT user_id, {_MALTA_NOW} + interval '30 days' FROM u")

    # -- bonuses ----------------------------------------------------------------------

    def grant_bonus(self, cur: psycopg.Cursor) -> None:
        cur.execute(
            "INSERT INTO bonus_grants (user_id, bonus_code, valid_until) "
            f"SELECT {_RANDOM_USER}, bonus_code, CASE WHEN random() < 0.7 THEN {_MALTA_NOW} + interval '14 days' END "
            "FROM bonus_catalogue ORDER BY random() LIMIT 1")

    def use_bonus(self, cur: psycopg.Cursor) -> None:
        cur.execute("UPDATE bonus_grants SET status = %s WHERE grant_id = (SELECT grant_id FROM bonus_grants "
                    "WHERE status = 'A' ORDER BY random() LIMIT 1)", (self.rng.choice("UUXC"),))

    def revoke_bonus(self, cur: psycopg.Cursor) -> None:
        cur.execute("DELETE FROM bonus_grants WHERE grant_id = (SELECT grant_id FROM bonus_grants "
                    "ORDER BY random() LIMIT 1)")

    def add_bonus(self, cur: psycopg.Cursor) -> None:
        n = self.rng.randrange(10**6)
        if self.rng.random() < 0.5:
            cur.execute("INSERT INTO bonus_catalogue (bonus_code, title, wagering) VALUES (%s, %s, 40) "
                        "ON CONFLICT DO NOTHING", (f"PROMO{n}", f"Promo #{n}"))
        else:  # wagering is not in the Bonus List: must not move the bonus
            cur.execute("UPDATE bonus_catalogue SET wagering = wagering + 1 WHERE bonus_code = "
                        "(SELECT bonus_code FROM bonus_catalogue ORDER BY random() LIMIT 1)")

    # -- sportsbook -------------------------------------------------------------------

    def add_tournament(self, cur: psycopg.Cursor) -> None:
        code, sport = self.rng.choice(SPORTS)
        n = self.rng.randrange(10**6)
        cur.execute(
            "INSERT INTO sb_tournaments (tournament_key, title, sport_code, sport, region, starts_on, ends_on) "
            f"VALUES (%s, %s, %s, %s, %s, {_MALTA_NOW}, {_MALTA_NOW} + interval '30 days') ON CONFLICT DO NOTHING",
            (f"{code}-cup-{n}", f"{sport} Cup {n}", code, sport, self.rng.choice(["Malta", "International"])))

    def add_event(self, cur: psycopg.Cursor) -> None:
        home, away = self.rng.sample(TEAMS, 2)
        outright = self.rng.random() < 0.1
        cur.execute(
            "INSERT INTO sb_events (event_key, tournament_key, home, away, event_name, kickoff, outright) "
            f"SELECT 'ev-' || floor(random() * 1e12)::bigint, tournament_key, %s, %s, %s, "
            f"{_MALTA_NOW} + interval '2 hours', %s FROM sb_tournaments ORDER BY random() LIMIT 1",
            (None if outright else home, None if outright else away, "Winner" if outright else None, outright))

    def advance_event(self, cur: psycopg.Cursor) -> None:
        cur.execute("UPDATE sb_events SET state = %s WHERE event_key = (SELECT event_key FROM sb_events "
                    "ORDER BY random() LIMIT 1)", (self.rng.choice(EVENT_STATES),))

    def place_bet(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        legs = r.choice([1, 1, 2, 3])
        cur.execute(
            f"WITH b AS (INSERT INTO sb_bets (user_id, bet_kind, stake, ccy, affiliate) "
            f"SELECT {_RANDOM_USER}, %s, %s, %s, %s RETURNING bet_id) "
            "INSERT INTO sb_selections (bet_id, event_key, price, market) "
            "SELECT b.bet_id, e.event_key, round((1.1 + random() * 6)::numeric, 2), %s "
            "FROM b, (SELECT event_key FROM sb_events ORDER BY random() LIMIT %s) e",
            ("S" if legs == 1 else r.choice("MY"), Decimal(r.randrange(100, 50000)) / 100, r.choice(["EUR", "USD"]),
             r.choice(["aff42", None]), r.choice(MARKETS), legs))

    def settle_bet(self, cur: psycopg.Cursor) -> None:
        won = self.rng.random() < 0.4
        cur.execute(
            "WITH b AS (SELECT bet_id FROM sb_bets WHERE state = 'placed' ORDER BY random() LIMIT 1), "
            "s AS (UPDATE sb_selections SET outcome = %s WHERE bet_id = (SELECT bet_id FROM b) RETURNING bet_id) "
            "UPDATE sb_bets SET state = %s, payout = CASE WHEN %s THEN stake * 2.5 ELSE 0 END "
            "WHERE bet_id = (SELECT bet_id FROM b)",
            ("W" if won else "L", "won" if won else "lost", won))

    # -- casino (casino_activity, docs/casino.md) ----------------------------------------
    # Players play game sessions (rounds): each step adds a bet, often with its win, to
    # an open session or opens a new one; now and then a bet is rolled back (a ROLLBACK
    # row), an action is corrected or deleted, or a column no feed carries changes.

    def casino_steps(self) -> list[tuple[float, Callable[[psycopg.Cursor], None]]]:
        self.sessions: list[tuple[str, str, int]] = []  # open (round_ref, game code, user_id)
        return [(14, self.play), (1, self.roll_back_bet), (1, self.correct_action), (1, self.touch_action)]

    def seed_games(self, cur: psycopg.Cursor) -> None:
        for code, title, provider in GAMES:
            cur.execute("INSERT INTO games (code, title, provider) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (code, title, provider))

    def play(self, cur: psycopg.Cursor) -> None:
        r = self.rng
        if not self.sessions or r.random() < 0.2:
            row = cur.execute(f"SELECT {_RANDOM_USER}").fetchone()
            assert row is not None
            self.sessions.append((str(uuid.UUID(int=r.getrandbits(128), version=4)), r.choice(GAMES)[0], row[0]))
            self.sessions = self.sessions[-20:]
        session, game, user = r.choice(self.sessions)
        bet = Decimal(r.randrange(10, 5000)) / 100
        win = Decimal(r.randrange(0, 20000)) / 100 if r.random() < 0.4 else None
        # One statement, one source transaction: the bet and its win, as the game server writes them.
        cur.execute(
            "INSERT INTO game_actions (round_ref, user_id, game_code, game_title, provider, tx_type, amount, currency, "
            "wallet, client_ip, client_ua, aff_code, server_node) "
            "SELECT %(session)s::uuid, %(user)s, g.code, g.title, g.provider, t.kind, t.amount, 'EUR', %(wallet)s, "
            "%(ip)s::inet, %(ua)s, %(aff)s, 'node-1' FROM games g, "
            "(VALUES ('BET', %(bet)s::numeric), ('WIN', %(win)s::numeric)) t(kind, amount) "
            "WHERE g.code = %(game)s AND t.amount IS NOT NULL",
            {"game": game, "session": session, "user": user, "bet": bet, "win": win,
             "wallet": r.choice(["real", "real", "bonus"]), "ip": f"10.1.{r.randrange(256)}.{r.randrange(1, 255)}",
             "ua": "Mozilla/5.0 (Linux; Android 14)", "aff": r.choice(["aff42", None])})

    def roll_back_bet(self, cur: psycopg.Cursor) -> None:
        cur.execute(
            "INSERT INTO game_actions (round_ref, user_id, game_code, game_title, provider, tx_type, amount, currency, "
            "wallet, client_ip, client_ua, aff_code) "
            "SELECT round_ref, user_id, game_code, game_title, provider, 'ROLLBACK', amount, currency, wallet, "
            "client_ip, client_ua, aff_code FROM game_actions WHERE tx_type = 'BET' ORDER BY id DESC LIMIT 1")

    def correct_action(self, cur: psycopg.Cursor) -> None:
        pick = "(SELECT id FROM game_actions ORDER BY id DESC OFFSET 3 LIMIT 1)"
        if self.rng.random() < 0.7:
            cur.execute(f"UPDATE game_actions SET amount = amount + 1 WHERE id = {pick}")
        else:
            cur.execute(f"DELETE FROM game_actions WHERE id = {pick}")

    def touch_action(self, cur: psycopg.Cursor) -> None:
        cur.execute("UPDATE game_actions SET server_node = 'node-2' WHERE id = "
                    "(SELECT id FROM game_actions ORDER BY id DESC LIMIT 1)")

    # -- driving ----------------------------------------------------------------------

    def step(self, cur: psycopg.Cursor) -> None:
        weights = [w for w, _ in self.actions]
        action = self.rng.choices([a for _, a in self.actions], weights)[0]
        action(cur)
        self.counts[action.__name__] = self.counts.get(action.__name__, 0) + 1
        self.statements += 1

    def run(self, stop: threading.Event) -> None:
        """Run at ``rate`` statements/s (autocommit: one source transaction each) until ``stop``."""
        interval = 1.0 / self.rate
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
                self.seed_reference_data(cur)
                next_at = time.monotonic()
                while not stop.is_set():
                    self.step(cur)
                    next_at += interval
                    stop.wait(max(0.0, next_at - time.monotonic()))
        except psycopg.OperationalError:
            # Ctrl-C reaches Postgres (same process group) as it reaches the demo, so the
            # server may end this connection just before ``stop`` is set: that is the
            # stop, not a failure worth a traceback.
            if not stop.wait(2.0):
                raise
