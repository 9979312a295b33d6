-- SpaceVegas: a legacy casino and sportsbook back end, as operators really have them.
-- No table has a modified_at the application maintains; column names are the
-- operator's own; naive timestamps are in the operator's local zone (Europe/Malta).
-- Feedstore maps these onto the InTarget feeds (deploy/mappings/spacevegas.yaml).
-- Casino game activity is aggregated from game_actions, at the end (docs/casino.md).

-- Players and Contacts (one table, two feeds), with five custom player fields.
CREATE TABLE IF NOT EXISTS users (
    user_id        bigserial PRIMARY KEY,
    fname          varchar(100),
    lname          varchar(100),
    sex            char(1),                 -- 'M' / 'F' / NULL
    country_name   text,
    city           text,
    last_ip        inet,
    lang           varchar(16),             -- 'en-US', 'de', 'pt_BR.UTF-8', ...
    tz             text,                    -- IANA name, any case
    dob            date,
    created        timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta'),
    affiliate_code text,
    reg_source     text,
    reg_ua         text,
    state          smallint NOT NULL DEFAULT 0,  -- 0 active, 1 blocked, 2 closed
    no_marketing   boolean NOT NULL DEFAULT false,
    email          text,
    email_ok_at    timestamp,
    phone          text,
    phone_ok_at    timestamp,
    sms_optin      boolean NOT NULL DEFAULT true,
    push_token     text,
    vip_level      smallint,                -- custom fields: integer,
    lifetime_value numeric(14,2),           --   2-decimal fraction,
    kyc_status     text,                    --   string,
    last_deposit_at timestamp,              --   date-time,
    segments       text[],                  --   array
    login_count    integer NOT NULL DEFAULT 0,   -- not in any feed: updates must not move rows
    last_seen      timestamp                      -- idem
);

-- Transactions: deposits ('D') and withdrawals ('W') in fiat and crypto.
CREATE TABLE IF NOT EXISTS payments (
    pay_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      bigint NOT NULL,
    amount       numeric(20,8) NOT NULL,
    ccy          varchar(6) NOT NULL,
    kind         char(1) NOT NULL,                    -- 'D' deposit, 'W' withdrawal
    pay_type     text NOT NULL DEFAULT 'real',        -- real, bonus, cashback, compensation, test
    state        varchar(12) NOT NULL DEFAULT 'pending', -- pending, processing, ok, failed
    provider     text,
    affiliate    text,
    created      timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta'),
    account_no   text,
    masked_pan   text,
    note         text,
    psp_ref      text                                 -- not in any feed
);

-- Wallets: one row per player account and currency, the balance kept in place.
CREATE TABLE IF NOT EXISTS accounts (
    account_no  text PRIMARY KEY,
    user_id     bigint NOT NULL,
    acc_type    varchar(8) NOT NULL,                  -- 'REAL' / 'BONUS'
    balance     numeric(20,8) NOT NULL DEFAULT 0,
    ccy         varchar(6) NOT NULL,
    opened      timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta'),
    locked_by   text                                  -- not in any feed
);

-- Logins: one row per attempt; a timestamptz, unlike the rest of the schema.
CREATE TABLE IF NOT EXISTS login_history (
    login_id    bigserial PRIMARY KEY,
    user_id     bigint NOT NULL,
    ip_addr     inet,
    at          timestamptz NOT NULL DEFAULT now(),
    aff         text,
    utm_source  text,
    agent       text,
    site        text,
    ok          boolean NOT NULL
);

-- Auto logins: "remember me" tokens; a new one replaces the player's older ones.
CREATE TABLE IF NOT EXISTS remember_tokens (
    token_id    bigserial PRIMARY KEY,
    user_id     bigint NOT NULL,
    token       uuid NOT NULL DEFAULT gen_random_uuid(),
    issued      timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta'),
    expires     timestamp
);

-- Bonus List and Bonus Assignments.
CREATE TABLE IF NOT EXISTS bonus_catalogue (
    bonus_code  varchar(40) PRIMARY KEY,
    title       text NOT NULL,
    added       timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta'),
    wagering    numeric(6,2),                         -- not in any feed
    enabled     boolean NOT NULL DEFAULT true         -- idem
);

CREATE TABLE IF NOT EXISTS bonus_grants (
    grant_id    bigserial PRIMARY KEY,
    user_id     bigint NOT NULL,
    bonus_code  varchar(40) NOT NULL,
    granted     timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta'),
    valid_until timestamp,                            -- NULL: never expires
    status      char(1) NOT NULL DEFAULT 'A'          -- A active, U used, X expired, C cancelled
);

-- Sportsbook: tournaments, events, bets and their selections (with odds).
CREATE TABLE IF NOT EXISTS sb_tournaments (
    tournament_key varchar(80) PRIMARY KEY,
    title          text NOT NULL,
    sport_code     varchar(10),
    sport          text,
    region         text,
    starts_on      timestamp NOT NULL,
    ends_on        timestamp
);

CREATE TABLE IF NOT EXISTS sb_events (
    event_key      varchar(80) PRIMARY KEY,
    tournament_key varchar(80) NOT NULL,
    home           text,
    away           text,
    event_name     text,                              -- outrights have a name, not two sides
    state          varchar(8) NOT NULL DEFAULT 'NS',  -- NS PRE LIVE SUSP DELAY FT CLOSED CANC ABND
    kickoff        timestamp NOT NULL,
    outright       boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS sb_bets (
    bet_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     bigint NOT NULL,
    state       text NOT NULL DEFAULT 'placed',       -- placed, accepted, won, lost, cashout, ...
    bet_kind    char(1) NOT NULL,                     -- S single, M multiple, Y system
    stake       numeric(20,8) NOT NULL,
    payout      numeric(20,8),
    ccy         varchar(6) NOT NULL,
    affiliate   text,
    placed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sb_selections (
    sel_id      bigserial PRIMARY KEY,
    bet_id      uuid NOT NULL,
    event_key   varchar(80) NOT NULL,
    price       numeric(10,3),                        -- decimal odds
    outcome     varchar(2),                           -- NULL open, W L HW HL R C X
    market      text NOT NULL,
    created     timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta')
);

-- ---------------------------------------------------------------------------------
-- Casino (casino_activity; docs/casino.md). The games catalogue the game server reads,
-- and its largest table: one row per game action. Bets, wins and rollbacks are rows
-- of one table told apart by tx_type (a ROLLBACK row cancels one earlier BET of the
-- same round, for the same amount). The game server copies the game's code, title and
-- provider onto every action, as provider callbacks carry them. round_ref is the game
-- session. No modified_at anywhere; corrections update or delete rows in place.
CREATE TABLE IF NOT EXISTS games (
    game_id     serial PRIMARY KEY,
    code        varchar(60) NOT NULL UNIQUE,
    title       text NOT NULL,
    provider    varchar(40) NOT NULL,
    enabled     boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS game_actions (
    id          bigserial PRIMARY KEY,
    round_ref   uuid NOT NULL,                        -- the game session
    user_id     bigint NOT NULL,
    game_code   varchar(60) NOT NULL,
    game_title  text NOT NULL,
    provider    varchar(40),
    tx_type     varchar(8) NOT NULL,                  -- BET, WIN, ROLLBACK
    amount      numeric(14,2) NOT NULL,
    currency    char(3) NOT NULL,
    wallet      varchar(8) NOT NULL DEFAULT 'real',   -- real, bonus
    client_ip   inet,
    client_ua   text,
    aff_code    text,
    created     timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Malta'),
    server_node text                                  -- not in any feed
);
-- end of the casino block
