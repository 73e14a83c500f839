"""Warehouse: landing tables (``src_*``, what each source said, latest state per natural key), a star
schema of dimensions (``dim_*``) and facts (``fct_*``), one daily mart per hospital (``mart_facility_day``)
and the read-only analyst role (cluster-wide, so kept on downgrade). Bills gain the visit number they charge. Grains and indicator definitions: docs/warehouse.md.

Surrogate keys are ``warehouse.skey(natural key)``, PostgreSQL's 64-bit ``hashtextextended`` of it (the
hash that hash partitioning relies on staying the same across versions; dbt_utils' generate_surrogate_key
does the same with MD5, 5× slower here): deterministic, so a rebuild yields the very same rows and facts
need no dimension lookup while loading.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- a bill names the visit it charges (the hospital's visit number), so costs per visit can be counted
        ALTER TABLE payment.bill ADD COLUMN encounter_id varchar(64);

        CREATE SCHEMA IF NOT EXISTS warehouse;

        CREATE FUNCTION warehouse.skey(text) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT hashtextextended($1, 0) $$;
        CREATE FUNCTION warehouse.skey(text, text) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT hashtextextended($1 || '|' || $2, 0) $$;
        -- a person's pseudonym: keyed by a secret the writers set per transaction (smartcare.person_seed,
        -- derived from the platform's secret key, never stored here), so EMPI ids cannot be hashed to it
        CREATE FUNCTION warehouse.person_key(text) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE
            AS $$ SELECT hashtextextended($1, current_setting('smartcare.person_seed')::bigint) $$;
        -- the day in China (the region's calendar), as the date dimension's key yyyymmdd
        CREATE FUNCTION warehouse.day_key(timestamptz) RETURNS integer
            LANGUAGE sql IMMUTABLE PARALLEL SAFE  -- date_part, not to_char: twice as fast on a load
            AS $$ SELECT (date_part('year', $1 AT TIME ZONE 'Asia/Shanghai') * 10000
                          + date_part('month', $1 AT TIME ZONE 'Asia/Shanghai') * 100
                          + date_part('day', $1 AT TIME ZONE 'Asia/Shanghai'))::integer $$;
        CREATE FUNCTION warehouse.day_key(date) RETURNS integer
            LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT (date_part('year', $1) * 10000 + date_part('month', $1) * 100 + date_part('day', $1))::integer $$;

        -- ICD-10 chapter (roman numeral) of a code by its letter and number, '?' for anything else
        CREATE FUNCTION warehouse.icd10_chapter(code text) RETURNS varchar(8)
            LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN code !~ '^[A-Z][0-9]{2}' THEN '?'
                        ELSE (SELECT ch FROM (VALUES ('A00', 'B99', 'I'), ('C00', 'D48', 'II'), ('D50', 'D89', 'III'),
                                  ('E00', 'E90', 'IV'), ('F00', 'F99', 'V'), ('G00', 'G99', 'VI'), ('H00', 'H59', 'VII'),
                                  ('H60', 'H95', 'VIII'), ('I00', 'I99', 'IX'), ('J00', 'J99', 'X'), ('K00', 'K93', 'XI'),
                                  ('L00', 'L99', 'XII'), ('M00', 'M99', 'XIII'), ('N00', 'N99', 'XIV'), ('O00', 'O99', 'XV'),
                                  ('P00', 'P96', 'XVI'), ('Q00', 'Q99', 'XVII'), ('R00', 'R99', 'XVIII'), ('S00', 'T98', 'XIX'),
                                  ('U00', 'U99', 'XXII'), ('V01', 'Y98', 'XX'), ('Z00', 'Z99', 'XXI')) r(lo, hi, ch)
                              WHERE left(code, 3) BETWEEN lo AND hi)
                   END $$;

        -- the order a visit moves in: a correction of a later stage overrides, an earlier one does not
        CREATE FUNCTION warehouse.visit_stage(text) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT CASE $1 WHEN 'cancelled' THEN 3 WHEN 'finished' THEN 2 ELSE 1 END $$;

        -- landing: one row per source record, its latest state -------------------------------------
        CREATE TABLE warehouse.src_encounter (
            facility_code     varchar(32) NOT NULL,
            encounter_id      varchar(64) NOT NULL,     -- the hospital's visit number (PV1-19)
            empi_id           varchar(20),
            class             varchar(8) CHECK (class IN ('AMB', 'EMER', 'IMP')),  -- NULL: not said yet (AMB)
            department_code   varchar(32),
            practitioner_code varchar(32),
            start_at          timestamptz,              -- NULL: not said yet (a discharge before its admission)
            end_at            timestamptz,
            recorded_at       timestamptz NOT NULL,     -- when the first event of it happened (the fallback start)
            status            varchar(12) NOT NULL CHECK (status IN ('in-progress', 'finished', 'cancelled')),
            surgeries         smallint NOT NULL DEFAULT 0,
            landed_at         timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (facility_code, encounter_id)
        );
        CREATE TABLE warehouse.src_settlement (
            settlement_no  varchar(32) PRIMARY KEY,
            facility_code  varchar(32) NOT NULL,
            bill_no        varchar(64) NOT NULL,
            encounter_id   varchar(64),
            empi_id        varchar(20),
            insurance_type varchar(10) NOT NULL,
            state          varchar(14) NOT NULL,     -- completed | refunded (in part or whole) | other states: no facts
            settled_at     timestamptz NOT NULL,
            total          bigint NOT NULL,          -- fen, net of refunds
            fund_pay       bigint NOT NULL,          -- pooled fund (hifp), net of refunds
            account_pay    bigint NOT NULL,          -- personal account (acct)
            insurer_pay    bigint NOT NULL,
            cash_pay       bigint NOT NULL,
            insurer        varchar(32),
            channel        varchar(10),
            landed_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE warehouse.src_charge (
            facility_code varchar(32) NOT NULL,
            bill_no       varchar(64) NOT NULL,
            line          smallint NOT NULL,
            settlement_no varchar(32) NOT NULL,
            encounter_id  varchar(64),
            empi_id       varchar(20),
            code          varchar(32) NOT NULL,
            name          varchar(200) NOT NULL,
            category      varchar(1) NOT NULL,
            amount        bigint NOT NULL,
            charged_at    timestamptz NOT NULL,
            PRIMARY KEY (facility_code, bill_no, line)
        );
        CREATE INDEX ix_src_charge_settlement ON warehouse.src_charge (settlement_no);
        CREATE TABLE warehouse.src_document (
            record_id     bigint PRIMARY KEY,         -- records.document.id
            facility_code varchar(64) NOT NULL,
            type_code     varchar(8) NOT NULL,
            empi_id       varchar(20),
            service_at    timestamptz NOT NULL,
            received_at   timestamptz NOT NULL,
            current       boolean NOT NULL,
            qc_score      numeric(5, 2),
            landed_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE warehouse.src_document_item (
            record_id    bigint NOT NULL,
            position     integer NOT NULL,
            kind         varchar(12) NOT NULL CHECK (kind IN ('condition', 'lab')),
            code         varchar(40) NOT NULL,
            name         varchar(200),
            value_number numeric,
            unit         varchar(40),
            at           timestamptz NOT NULL,
            PRIMARY KEY (record_id, position)
        );
        CREATE TABLE warehouse.src_message (
            message_id    bigint PRIMARY KEY,
            facility_code varchar(32),
            sender        varchar(100) NOT NULL,
            kind          varchar(16) NOT NULL,
            message_type  varchar(64),
            state         varchar(16) NOT NULL,
            received_at   timestamptz NOT NULL,
            processed_at  timestamptz
        );
        CREATE TABLE warehouse.src_card_use (
            use_id        bigint PRIMARY KEY,
            card_id       bigint NOT NULL,
            facility_code varchar(32) NOT NULL,
            step          varchar(16) NOT NULL,
            channel       varchar(16) NOT NULL,
            used_at       timestamptz NOT NULL
        );
        CREATE TABLE warehouse.src_booking (
            appointment_no    varchar(24) PRIMARY KEY,
            empi_id           varchar(20) NOT NULL,
            facility_code     varchar(32) NOT NULL,
            department_code   varchar(32) NOT NULL,
            practitioner_code varchar(32),
            visit_date        date NOT NULL,
            state             varchar(12) NOT NULL,
            booked_at         timestamptz NOT NULL
        );
        -- persons as observed: a row only when district or insurance type changed (SCD type 2 source)
        CREATE TABLE warehouse.src_person (
            empi_id        varchar(20) NOT NULL,
            valid_from     timestamptz NOT NULL,
            birth_year     smallint,
            sex            varchar(1),
            district_code  varchar(6),
            insurance_type varchar(10),
            PRIMARY KEY (empi_id, valid_from)
        );
        -- how far the pulled sources (messages, card uses) have been read
        CREATE TABLE warehouse.watermark (
            source  varchar(32) PRIMARY KEY,
            read_to timestamptz NOT NULL
        );

        -- dimensions -----------------------------------------------------------------------------
        CREATE TABLE warehouse.dim_date (
            date_key     integer PRIMARY KEY,
            day          date NOT NULL UNIQUE,
            year         smallint NOT NULL,
            quarter      smallint NOT NULL,
            month        smallint NOT NULL,
            day_of_month smallint NOT NULL,
            iso_week     smallint NOT NULL,
            weekday      smallint NOT NULL,         -- 1 Monday … 7 Sunday
            is_weekend   boolean NOT NULL
        );
        INSERT INTO warehouse.dim_date
        SELECT warehouse.day_key(d::date), d::date, extract(year FROM d), extract(quarter FROM d), extract(month FROM d),
               extract(day FROM d), extract(week FROM d), extract(isodow FROM d), extract(isodow FROM d) >= 6
        FROM generate_series(date '2015-01-01', date '2040-12-31', interval '1 day') AS d;

        CREATE TABLE warehouse.dim_facility (
            facility_key  bigint PRIMARY KEY,
            code          varchar(100) NOT NULL UNIQUE,  -- a registry code, or an unregistered sender's name
            name          varchar(200) NOT NULL,
            kind          varchar(40) NOT NULL,
            level         smallint,
            grade         varchar(2),
            ownership     varchar(8),
            is_public     boolean NOT NULL,
            is_hospital   boolean NOT NULL,          -- a hospital (not a community or township health centre)
            district_code varchar(6),
            district_name varchar(50),
            beds          integer NOT NULL
        );
        CREATE TABLE warehouse.dim_department (
            department_key bigint PRIMARY KEY,
            facility_code  varchar(64) NOT NULL,
            code           varchar(32) NOT NULL,
            name           varchar(100) NOT NULL,
            UNIQUE (facility_code, code)
        );
        CREATE TABLE warehouse.dim_practitioner (
            practitioner_key bigint PRIMARY KEY,
            facility_code    varchar(64) NOT NULL,
            code             varchar(32) NOT NULL,
            department_code  varchar(32),
            title            varchar(20),
            UNIQUE (facility_code, code)
        );
        CREATE TABLE warehouse.dim_person (
            person_key     bigint PRIMARY KEY,        -- person_key(empi_id|valid_from): one version
            person_id      bigint NOT NULL,           -- person_key(empi_id): the durable key facts carry (no EMPI id)
            birth_year     smallint,
            sex            varchar(1),
            district_code  varchar(6),
            insurance_type varchar(10),
            valid_from     timestamptz NOT NULL,
            valid_to       timestamptz,               -- NULL: the current version
            is_current     boolean NOT NULL
        );
        CREATE UNIQUE INDEX ux_dim_person_current ON warehouse.dim_person (person_id) WHERE is_current;
        CREATE UNIQUE INDEX ux_dim_person_version ON warehouse.dim_person (person_id, valid_from);
        CREATE TABLE warehouse.dim_diagnosis (
            diagnosis_key bigint PRIMARY KEY,
            code          varchar(40) NOT NULL UNIQUE,
            name          varchar(200),
            chapter       varchar(8) NOT NULL        -- ICD-10 chapter by the code's letter range, '?' if not ICD-10
        );
        CREATE TABLE warehouse.dim_charge_item (
            charge_item_key bigint PRIMARY KEY,
            code            varchar(32) NOT NULL UNIQUE,
            name            varchar(200) NOT NULL,
            category        varchar(1) NOT NULL CHECK (category IN ('甲', '乙', '丙')),
            is_drug         boolean NOT NULL
        );
        CREATE TABLE warehouse.dim_payer (
            payer_key bigint PRIMARY KEY,
            code      varchar(48) NOT NULL UNIQUE,
            kind      varchar(12) NOT NULL CHECK (kind IN ('fund', 'account', 'commercial', 'self')),
            name      varchar(100) NOT NULL
        );
        CREATE TABLE warehouse.dim_document_type (
            document_type_key bigint PRIMARY KEY,
            code              varchar(8) NOT NULL UNIQUE,
            name              varchar(200) NOT NULL
        );

        -- facts ------------------------------------------------------------------------------------
        CREATE TABLE warehouse.fct_outpatient_visit (
            facility_key     bigint NOT NULL,
            encounter_id     varchar(64) NOT NULL,
            date_key         integer NOT NULL,
            department_key   bigint,
            practitioner_key bigint,
            person_id        bigint,
            class            varchar(8) NOT NULL,
            started_at       timestamptz NOT NULL,
            PRIMARY KEY (facility_key, encounter_id)
        );
        CREATE INDEX ix_fct_visit_day ON warehouse.fct_outpatient_visit (facility_key, date_key);
        CREATE TABLE warehouse.fct_inpatient_stay (
            facility_key       bigint NOT NULL,
            encounter_id       varchar(64) NOT NULL,
            admit_date_key     integer NOT NULL,
            discharge_date_key integer,
            department_key     bigint,
            person_id          bigint,
            admitted_at        timestamptz NOT NULL,
            discharged_at      timestamptz,
            bed_days           integer,              -- discharge day − admission day, at least 1
            surgeries          smallint NOT NULL,
            PRIMARY KEY (facility_key, encounter_id)
        );
        CREATE INDEX ix_fct_stay_discharge ON warehouse.fct_inpatient_stay (discharge_date_key);
        CREATE INDEX ix_fct_stay_admit ON warehouse.fct_inpatient_stay (admit_date_key);
        CREATE INDEX ix_fct_stay_open ON warehouse.fct_inpatient_stay (admit_date_key) WHERE discharge_date_key IS NULL;
        CREATE TABLE warehouse.fct_charge_item (
            facility_key    bigint NOT NULL,
            bill_no         varchar(64) NOT NULL,
            line            smallint NOT NULL,
            encounter_id    varchar(64),
            date_key        integer NOT NULL,
            person_id       bigint,
            charge_item_key bigint NOT NULL,
            is_drug         boolean NOT NULL,
            amount          bigint NOT NULL,
            PRIMARY KEY (facility_key, bill_no, line)
        );
        CREATE INDEX ix_fct_charge_day ON warehouse.fct_charge_item (facility_key, date_key);
        CREATE INDEX ix_fct_charge_encounter ON warehouse.fct_charge_item (facility_key, encounter_id);
        CREATE TABLE warehouse.fct_settlement_payer (
            settlement_no varchar(32) NOT NULL,
            payer_key     bigint NOT NULL,
            payer_kind    varchar(12) NOT NULL,
            facility_key  bigint NOT NULL,
            date_key      integer NOT NULL,
            person_id     bigint,
            amount        bigint NOT NULL,
            PRIMARY KEY (settlement_no, payer_key)
        );
        CREATE INDEX ix_fct_settlement_day ON warehouse.fct_settlement_payer (facility_key, date_key);
        CREATE TABLE warehouse.fct_diagnosis (
            record_id         bigint NOT NULL,
            position          integer NOT NULL,
            facility_key      bigint NOT NULL,
            date_key          integer NOT NULL,
            person_id         bigint,
            diagnosis_key     bigint NOT NULL,
            document_type_key bigint NOT NULL,
            PRIMARY KEY (record_id, position)
        );
        CREATE INDEX ix_fct_diagnosis_day ON warehouse.fct_diagnosis (facility_key, date_key);
        CREATE TABLE warehouse.fct_lab_result (
            record_id    bigint NOT NULL,
            position     integer NOT NULL,
            facility_key bigint NOT NULL,
            date_key     integer NOT NULL,
            person_id    bigint,
            code         varchar(40) NOT NULL,
            value_number numeric,
            unit         varchar(40),
            PRIMARY KEY (record_id, position)
        );
        CREATE INDEX ix_fct_lab_day ON warehouse.fct_lab_result (facility_key, date_key);
        CREATE TABLE warehouse.fct_document (
            record_id         bigint PRIMARY KEY,
            facility_key      bigint NOT NULL,
            date_key          integer NOT NULL,      -- the day it was received
            document_type_key bigint NOT NULL,
            person_id         bigint,
            service_at        timestamptz NOT NULL,
            received_at       timestamptz NOT NULL,
            upload_hours      numeric(10, 2) NOT NULL,
            on_time           boolean NOT NULL,      -- received within 24 hours of the service
            qc_score          numeric(5, 2),
            is_current        boolean NOT NULL
        );
        CREATE INDEX ix_fct_document_day ON warehouse.fct_document (facility_key, date_key);
        CREATE TABLE warehouse.fct_message (
            message_id   bigint PRIMARY KEY,
            facility_key bigint NOT NULL,
            date_key     integer NOT NULL,
            received_at  timestamptz NOT NULL,
            kind         varchar(16) NOT NULL,
            message_type varchar(64),
            failed       boolean NOT NULL,
            latency_ms   integer
        );
        CREATE INDEX ix_fct_message_day ON warehouse.fct_message (facility_key, date_key);
        CREATE INDEX ix_fct_message_received ON warehouse.fct_message (received_at);
        CREATE TABLE warehouse.fct_card_use (
            use_id       bigint PRIMARY KEY,
            facility_key bigint NOT NULL,
            date_key     integer NOT NULL,
            card_id      bigint NOT NULL,
            used_at      timestamptz NOT NULL,
            step         varchar(16) NOT NULL,
            channel      varchar(16) NOT NULL
        );
        CREATE INDEX ix_fct_card_use_day ON warehouse.fct_card_use (facility_key, date_key);
        CREATE TABLE warehouse.fct_booking (
            appointment_no  varchar(24) PRIMARY KEY,
            facility_key    bigint NOT NULL,
            date_key        integer NOT NULL,        -- the visit day
            booked_date_key integer NOT NULL,
            department_key  bigint NOT NULL,
            person_id       bigint NOT NULL,
            state           varchar(12) NOT NULL
        );
        CREATE INDEX ix_fct_booking_day ON warehouse.fct_booking (facility_key, date_key);

        -- the daily mart behind the indicators: additive measures per hospital and day
        CREATE TABLE warehouse.mart_facility_day (
            facility_key        bigint NOT NULL,
            date_key            integer NOT NULL,
            outpatient_visits   integer NOT NULL,
            outpatient_cost     bigint NOT NULL,
            admissions          integer NOT NULL,
            discharges          integer NOT NULL,
            inpatient_cost      bigint NOT NULL,
            discharged_bed_days integer NOT NULL,
            surgeries           integer NOT NULL,
            charge_total        bigint NOT NULL,
            drug_cost           bigint NOT NULL,
            booked_visits       integer NOT NULL,
            settled_total       bigint NOT NULL,
            fund_paid           bigint NOT NULL,
            self_paid           bigint NOT NULL,
            card_visits         integer NOT NULL,
            documents           integer NOT NULL,
            documents_on_time   integer NOT NULL,
            qc_checked          integer NOT NULL,
            qc_score_sum        numeric(14, 2) NOT NULL,
            messages            integer NOT NULL,
            messages_failed     integer NOT NULL,
            last_data_at        timestamptz,          -- the newest message or document received that day
            PRIMARY KEY (facility_key, date_key)
        );
        CREATE INDEX ix_mart_day ON warehouse.mart_facility_day (date_key);

        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'smartcare_analyst') THEN
                CREATE ROLE smartcare_analyst NOLOGIN;
            END IF;
        END $$;
        GRANT USAGE ON SCHEMA warehouse TO smartcare_analyst;
        -- the star schema only: not the landing tables (they hold EMPI ids and card ids)
        GRANT SELECT ON warehouse.dim_date, warehouse.dim_facility, warehouse.dim_department,
            warehouse.dim_practitioner, warehouse.dim_person, warehouse.dim_diagnosis, warehouse.dim_charge_item,
            warehouse.dim_payer, warehouse.dim_document_type, warehouse.fct_outpatient_visit,
            warehouse.fct_inpatient_stay, warehouse.fct_charge_item, warehouse.fct_settlement_payer,
            warehouse.fct_diagnosis, warehouse.fct_lab_result, warehouse.fct_document, warehouse.fct_message,
            warehouse.fct_card_use, warehouse.fct_booking, warehouse.mart_facility_day TO smartcare_analyst;
        """
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS warehouse CASCADE; ALTER TABLE payment.bill DROP COLUMN encounter_id")
