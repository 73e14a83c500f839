"""A booking attempt as SQL functions, so that an attempt is one statement: ``booking.attempt`` (the resident's
card, the slot, its release time, the blacklist, a free place) and ``booking.take_place`` (the person's lock,
their limits, the new appointment), which a waitlist offer calls too; ``booking.rules_of`` is a hospital's
effective rules (its overrides over the region's default), read by both and by ``booking.rules.effective``;
``healthcard.held_card`` is the card an account holds, as the health card says it, for the attempt to read;
``booking.event`` and ``booking.tell_booked`` are a booking's bus event and notice, written in the attempt's
statement (or in ``confirm``'s transaction); the trigger ``slot_freed`` tells every process when a full slot has a free place again (``booking.full``).

In a release burst the attempts that reach the database used to make about twenty round trips each, several
through the ORM, each one waiting for the server process's interpreter lock between them while other requests
ran, the slot's row locked from the insert to the commit. Now the rules are checked where the rows are, and a
booking, its event and its notice commit in one statement.

Revision ID: 0019
Revises: 0018
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

#: booking.rule_set's rules (migration 0011): a hospital's NULL takes the default's value
RULES = ("release_time", "release_days", "hold_minutes", "per_day", "per_department", "per_doctor",
         "cancel_deadline_minutes", "noshow_limit", "cancel_limit", "window_days", "blacklist_days",
         "return_min_seconds", "return_max_seconds", "offer_minutes", "noshow_grace_minutes", "reminder_hours")


def upgrade() -> None:
    merged = ", ".join(f"coalesce(f.{name}, d.{name})" for name in RULES)
    op.execute(f"""
        CREATE FUNCTION booking.rules_of(p_facility varchar) RETURNS booking.rule_set LANGUAGE sql STABLE AS $$
            SELECT p_facility, {merged}, greatest(d.updated_at, f.updated_at), coalesce(f.updated_by, d.updated_by)
              FROM booking.rule_set d LEFT JOIN booking.rule_set f ON f.facility_code = p_facility
             WHERE d.facility_code = '*'
        $$;

        -- The health card's rule, for other capabilities' SQL (as healthcard.service.holder_card says it): the card an
        -- account holds, its person and state; no row for a card the account does not hold.
        CREATE FUNCTION healthcard.held_card(p_account varchar, p_card varchar)
            RETURNS TABLE (empi_id varchar, state varchar) LANGUAGE sql STABLE AS $$
            SELECT k.empi_id, k.state FROM healthcard.card k JOIN healthcard.holder h ON h.card_id = k.id
             WHERE h.username = p_account AND k.card_no = p_card
        $$;

        -- A place of the slot for the person: under the person's lock (waited for, or only tried: 'busy'), within
        -- their limits for the visit day, the appointment inserted, numbered BK, the visit day and p_token (the
        -- trigger of migration 0011 counts the place; a full or withdrawn slot fails its check: 'no_slot').
        -- Outcome: p_state on success, else why not.
        CREATE FUNCTION booking.take_place(p_slot bigint, p_empi varchar, p_card varchar, p_account varchar,
                                           p_token varchar, p_state varchar, p_waitlist bigint, p_wait boolean,
                                           OUT outcome text, OUT limit_value integer, OUT appointment_id bigint,
                                           OUT appointment_no varchar,
                                           OUT held_until timestamptz, OUT created_at timestamptz)
        LANGUAGE plpgsql AS $$
        DECLARE
            s booking.slot;
            r booking.rule_set;
            n_day integer; n_department integer; n_doctor integer; n_slot integer;
        BEGIN
            SELECT * INTO STRICT s FROM booking.slot WHERE id = p_slot;
            r := booking.rules_of(s.facility_code);
            IF p_wait THEN
                PERFORM pg_advisory_xact_lock(hashtextextended('booking:' || p_empi, 0));
            ELSIF NOT pg_try_advisory_xact_lock(hashtextextended('booking:' || p_empi, 0)) THEN
                outcome := 'busy';
                RETURN;
            END IF;
            -- a statement after the lock: its snapshot holds every place of this person committed before it
            SELECT count(*),
                   count(*) FILTER (WHERE a.facility_code = s.facility_code AND a.department_code = s.department_code),
                   count(*) FILTER (WHERE a.facility_code = s.facility_code AND a.practitioner_code = s.practitioner_code),
                   count(*) FILTER (WHERE a.slot_id = p_slot)
              INTO n_day, n_department, n_doctor, n_slot
              FROM booking.appointment a
             WHERE a.empi_id = p_empi AND a.visit_date = s.visit_date AND a.state IN ('held', 'booked', 'checked_in');
            IF n_slot > 0 THEN
                outcome := 'in_slot';
            ELSIF n_day >= r.per_day THEN
                outcome := 'per_day'; limit_value := r.per_day;
            ELSIF n_department >= r.per_department THEN
                outcome := 'per_department'; limit_value := r.per_department;
            ELSIF s.practitioner_code IS NOT NULL AND n_doctor >= r.per_doctor THEN
                outcome := 'per_doctor'; limit_value := r.per_doctor;
            END IF;
            IF outcome IS NOT NULL THEN
                RETURN;
            END IF;
            BEGIN
                INSERT INTO booking.appointment AS a (appointment_no, slot_id, empi_id, card_no, account, facility_code,
                        department_code, practitioner_code, visit_date, state, held_until, booked_at, waitlist_id)
                VALUES ('BK' || to_char(s.visit_date, 'YYMMDD') || p_token, p_slot, p_empi, p_card, p_account,
                        s.facility_code, s.department_code, s.practitioner_code, s.visit_date, p_state,
                        CASE WHEN p_state = 'held' THEN least(now() + make_interval(mins =>
                            CASE WHEN p_waitlist IS NULL THEN r.hold_minutes ELSE r.offer_minutes END), s.starts_at) END,
                        CASE WHEN p_state = 'booked' THEN now() END, p_waitlist)
                RETURNING a.id, a.appointment_no, a.held_until, a.created_at
                     INTO appointment_id, appointment_no, held_until, created_at;
                outcome := p_state;
            EXCEPTION
                WHEN check_violation THEN outcome := 'no_slot';     -- slot_not_overbooked, or withdrawn meanwhile
                WHEN unique_violation THEN outcome := 'in_slot';    -- appointment_one_per_slot
            END;
        END $$;

        -- A resident's attempt on a slot with a card their account holds: held (or booked at once, p_book), or why
        -- not, with what the answer and the hospital's event need. The checks go in the order the API states them.
        CREATE FUNCTION booking.attempt(p_account varchar, p_card varchar, p_slot bigint, p_book boolean, p_token varchar,
                                        p_channel text, p_fan_out boolean,
                                        OUT outcome text, OUT detail text, OUT at timestamptz, OUT limit_value integer,
                                        OUT appointment_id bigint, OUT appointment_no varchar, OUT empi_id varchar,
                                        OUT held_until timestamptz, OUT created_at timestamptz, OUT places_left integer,
                                        OUT facility_code varchar, OUT department_code varchar,
                                        OUT department_name varchar, OUT practitioner_code varchar,
                                        OUT practitioner_name varchar, OUT source_id varchar, OUT starts_at timestamptz,
                                        OUT ends_at timestamptz, OUT fee bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            card_state varchar;
            s booking.slot;
            t record;
        BEGIN
            SELECT c.empi_id, c.state INTO empi_id, card_state FROM healthcard.held_card(p_account, p_card) c;
            IF NOT FOUND THEN
                outcome := 'not_your_card'; RETURN;
            ELSIF card_state <> 'active' THEN
                outcome := 'card_state'; detail := card_state; RETURN;
            END IF;
            SELECT * INTO s FROM booking.slot WHERE id = p_slot;
            IF NOT FOUND THEN
                outcome := 'no_such_slot'; RETURN;
            END IF;
            facility_code := s.facility_code; department_code := s.department_code;
            department_name := s.department_name; practitioner_code := s.practitioner_code;
            practitioner_name := s.practitioner_name; source_id := s.source_id; starts_at := s.starts_at;
            ends_at := s.ends_at; fee := s.fee; places_left := s.capacity - s.taken - s.withheld;
            IF s.state <> 'open' OR s.starts_at <= now() THEN
                outcome := 'not_offered'; RETURN;
            ELSIF s.release_at > now() THEN
                outcome := 'not_released'; at := s.release_at; RETURN;
            END IF;
            SELECT max(b.until) INTO at FROM booking.blacklist b
             WHERE b.empi_id = attempt.empi_id AND b.until > now() AND b.lifted_at IS NULL;
            IF at IS NOT NULL THEN
                outcome := 'blacklisted'; RETURN;
            ELSIF places_left <= 0 THEN
                outcome := 'no_slot'; RETURN;
            END IF;
            SELECT * INTO t FROM booking.take_place(p_slot, empi_id, p_card, p_account, p_token,
                                                    CASE WHEN p_book THEN 'booked' ELSE 'held' END, NULL, true);
            outcome := t.outcome; limit_value := t.limit_value; appointment_id := t.appointment_id;
            appointment_no := t.appointment_no;
            held_until := t.held_until; created_at := t.created_at; places_left := places_left - 1;
            IF outcome = 'booked' THEN
                PERFORM booking.tell_booked(appointment_id, p_channel, p_fan_out);
            END IF;
        END $$;

        -- booking.appointment.<p_what> for the hospital's systems and the warehouse, published in the caller's
        -- transaction (p_channel, p_fan_out: bus.sql_publish_target).
        CREATE FUNCTION booking.event(p_appointment bigint, p_what text, p_channel text, p_fan_out boolean)
            RETURNS boolean LANGUAGE sql AS $$
            SELECT platform.publish(gen_random_uuid(), 'booking.appointment.' || p_what, jsonb_build_object(
                       'appointment_no', a.appointment_no, 'facility_code', a.facility_code,
                       'slot_source_id', s.source_id, 'department_code', a.department_code,
                       'practitioner_code', a.practitioner_code,
                       'starts_at', to_char(s.starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
                       'ends_at', to_char(s.ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
                       'empi_id', a.empi_id, 'card_no', a.card_no, 'state', a.state, 'fee', s.fee),
                   p_channel, p_fan_out)
              FROM booking.appointment a JOIN booking.slot s ON s.id = a.slot_id WHERE a.id = p_appointment
        $$;

        -- A booking made: the hospital's event and the resident's notice (booking.notification, which the
        -- notification gateway delivers; the text carries no personal data).
        CREATE FUNCTION booking.tell_booked(p_appointment bigint, p_channel text, p_fan_out boolean)
            RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM booking.event(p_appointment, 'booked', p_channel, p_fan_out);
            INSERT INTO booking.notification (account, appointment_id, kind, text)
            SELECT a.account, a.id, 'booked',
                   format('【SmartCare】预约成功：%s %s，预约号 %s。请按时就诊，就诊当天在医院扫电子健康卡签到。',
                          s.department_name, to_char(s.starts_at AT TIME ZONE 'Asia/Shanghai', 'MM"月"DD"日" HH24:MI'),
                          a.appointment_no)
              FROM booking.appointment a JOIN booking.slot s ON s.id = a.slot_id WHERE a.id = p_appointment
            ON CONFLICT DO NOTHING;
        END $$;

        -- A slot that had no free place has one again (a place returned, the capacity raised): every process that
        -- remembers it as full forgets it at once (booking.full).
        CREATE FUNCTION booking.slot_freed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('booking_slot_freed', NEW.id::text);
            RETURN NULL;
        END $$;
        CREATE TRIGGER slot_freed AFTER UPDATE ON booking.slot FOR EACH ROW
            WHEN (OLD.capacity - OLD.taken - OLD.withheld <= 0 AND NEW.capacity - NEW.taken - NEW.withheld > 0)
            EXECUTE FUNCTION booking.slot_freed();
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER slot_freed ON booking.slot; DROP FUNCTION booking.slot_freed(); "
               "DROP FUNCTION booking.attempt(varchar, varchar, bigint, boolean, varchar, text, boolean); "
               "DROP FUNCTION booking.tell_booked(bigint, text, boolean); DROP FUNCTION booking.event(bigint, text, text, boolean); "
               "DROP FUNCTION booking.take_place(bigint, varchar, varchar, varchar, varchar, varchar, bigint, boolean); "
               "DROP FUNCTION booking.rules_of(varchar); DROP FUNCTION healthcard.held_card(varchar, varchar)")
