-- SpaceVegas: a legacy casino back end, as operators really have them.
-- No table has a modified_at the application maintains; column names are the
-- operator's own; naive timestamps are in the operator's local zone (Europe/Malta).
-- Feedstore maps these onto the InTarget feeds (deploy/mappings/spacevegas.yaml).

CREATE TABLE IF NOT EXISTS users (
    user_id        bigserial PRIMARY KEY,
    fname          varchar(100),
    lname          varchar(100),
    sex            char(1),                 -- 'M' / 'F' / NULL
    country_name   text,
    city           text,
    last_ip        inet,
    lang           varchar(10),             -- 'en-US', 'de', ...
    tz             text,                    -- IANA name
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
    login_count    integer NOT NULL DEFAULT 0,   -- not in any feed: updates must not move rows
    last_seen      timestamp                      -- idem
);
