-- The Redshift SQL shim: objects Redshift has and Postgres 15 lacks, installed per test database.
-- Types and functions live in schema zetl_shim, which is on the database's search_path, so the
-- sink's unqualified SUPER / JSON_PARSE / GETDATE / NVL resolve as they do on Redshift.
CREATE SCHEMA IF NOT EXISTS zetl_shim;

-- SUPER: semi-structured values; jsonb keeps the document exactly and lets tests query by key.
CREATE DOMAIN zetl_shim.super AS jsonb;

CREATE FUNCTION zetl_shim.json_parse(text) RETURNS zetl_shim.super
    LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::zetl_shim.super $$;

CREATE FUNCTION zetl_shim.json_serialize(zetl_shim.super) RETURNS varchar
    LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT ($1::jsonb)::text $$;

-- Redshift's json_extract_path_text takes a varchar document.
CREATE FUNCTION zetl_shim.json_extract_path_text(text, VARIADIC text[]) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT jsonb_extract_path_text($1::jsonb, VARIADIC $2) $$;

CREATE FUNCTION zetl_shim.getdate() RETURNS timestamp
    LANGUAGE sql STABLE AS $$ SELECT (now() AT TIME ZONE 'UTC')::timestamp(0) $$;

CREATE FUNCTION zetl_shim.nvl(anyelement, anyelement) RETURNS anyelement
    LANGUAGE sql IMMUTABLE AS $$ SELECT coalesce($1, $2) $$;

-- VARBYTE arrives as BYTEA (the proxy rewrites the type name); hex text converts with TO_VARBYTE.
CREATE FUNCTION zetl_shim.to_varbyte(text, text) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF lower($2) <> 'hex' THEN
        RAISE EXCEPTION 'to_varbyte: only the hex format is emulated, got %', $2;
    END IF;
    RETURN decode($1, 'hex');
END $$;

-- How the proxy turns a failed emulated COPY into a statement error in the client's session.
CREATE FUNCTION zetl_shim.fail(text) RETURNS void
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '%', $1 USING ERRCODE = 'XX000'; END $$;

CREATE FUNCTION zetl_shim.from_varbyte(bytea, text) RETURNS varchar
    LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF lower($2) <> 'hex' THEN
        RAISE EXCEPTION 'from_varbyte: only the hex format is emulated, got %', $2;
    END IF;
    RETURN encode($1, 'hex');
END $$;
