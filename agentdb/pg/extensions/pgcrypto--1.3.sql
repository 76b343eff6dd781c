-- What of pgcrypto core PostgreSQL can do soundly: digest() and hmac() over md5() and
-- sha224() to sha512() (and the SHA-1 above), gen_random_bytes() from the server's strong
-- random source. gen_random_uuid() is core already. Password hashing and encryption need
-- OpenSSL: those functions exist, so a migration that creates the extension runs, and say
-- what to do instead when called.

CREATE FUNCTION @extschema@.digest(bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN
    CASE lower($2)
        WHEN 'md5' THEN RETURN decode(md5($1), 'hex');
        WHEN 'sha1' THEN RETURN @extschema@.@sha1@($1);
        WHEN 'sha224' THEN RETURN sha224($1);
        WHEN 'sha256' THEN RETURN sha256($1);
        WHEN 'sha384' THEN RETURN sha384($1);
        WHEN 'sha512' THEN RETURN sha512($1);
        ELSE
            RAISE EXCEPTION 'Cannot use "%": No such hash algorithm', $2
                USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END
$fn$;

CREATE FUNCTION @extschema@.digest(text, text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN @extschema@.digest(convert_to($1, 'UTF8'), $2);

-- RFC 2104.
CREATE FUNCTION @extschema@.hmac(bytea, bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
    block int := CASE WHEN lower($3) IN ('sha384', 'sha512') THEN 128 ELSE 64 END;
    key bytea := $2;
    inner_key bytea;
    outer_key bytea;
BEGIN
    IF length(key) > block THEN
        key := @extschema@.digest(key, $3);
    END IF;
    key := key || decode(repeat('00', block - length(key)), 'hex');
    inner_key := key;
    outer_key := key;
    FOR i IN 0 .. block - 1 LOOP
        inner_key := set_byte(inner_key, i, get_byte(key, i) # 54);
        outer_key := set_byte(outer_key, i, get_byte(key, i) # 92);
    END LOOP;
    RETURN @extschema@.digest(outer_key || @extschema@.digest(inner_key || $1, $3), $3);
END
$fn$;

CREATE FUNCTION @extschema@.hmac(text, text, text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN @extschema@.hmac(convert_to($1, 'UTF8'), convert_to($2, 'UTF8'), $3);

-- Bytes of gen_random_uuid() (the server's strong random source) without its fixed version
-- and variant bits: 13 of each 16.
CREATE FUNCTION @extschema@.gen_random_bytes(integer) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
DECLARE
    result bytea := ''::bytea;
    noise bytea;
BEGIN
    IF $1 < 1 OR $1 > 1024 THEN
        RAISE EXCEPTION 'Length not in range' USING ERRCODE = 'external_routine_invocation_exception';
    END IF;
    WHILE length(result) < $1 LOOP
        noise := uuid_send(gen_random_uuid());
        result := result || substring(noise FROM 1 FOR 6) || substring(noise FROM 10 FOR 7);
    END LOOP;
    RETURN substring(result FROM 1 FOR $1);
END
$fn$;

-- Needs OpenSSL: not in agentdb's local plane.
CREATE FUNCTION @extschema@._pgcrypto_unavailable(what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
    RAISE EXCEPTION '% is not available in agentdb''s local plane (its embedded PostgreSQL has no OpenSSL)', what
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Hash passwords in the application (bcrypt or argon2) and encrypt there, '
                  'or run the session on Neon, where pgcrypto is complete.';
END
$fn$;

CREATE FUNCTION @extschema@.crypt(text, text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('crypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.gen_salt(text) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('gen_salt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.gen_salt(text, integer) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('gen_salt()'); RETURN NULL; END
$fn$;

-- Every PGP and raw cipher entry point of upstream's 1.3, with its volatility. armor(),
-- dearmor(), pgp_armor_headers() and pgp_key_id() are left out: they need no OpenSSL
-- upstream, so a stub saying they do would mislead.
CREATE FUNCTION @extschema@.pgp_sym_encrypt(text, text) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_encrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_sym_encrypt(text, text, text) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_encrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_sym_encrypt_bytea(bytea, text) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_encrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_sym_encrypt_bytea(bytea, text, text) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_encrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_sym_decrypt(bytea, text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_decrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_sym_decrypt(bytea, text, text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_decrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_sym_decrypt_bytea(bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_decrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_sym_decrypt_bytea(bytea, text, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_sym_decrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_encrypt(text, bytea) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_encrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_encrypt(text, bytea, text) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_encrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_encrypt_bytea(bytea, bytea) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_encrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_encrypt_bytea(bytea, bytea, text) RETURNS bytea
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_encrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_decrypt(bytea, bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_decrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_decrypt(bytea, bytea, text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_decrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_decrypt(bytea, bytea, text, text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_decrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_decrypt_bytea(bytea, bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_decrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_decrypt_bytea(bytea, bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_decrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.pgp_pub_decrypt_bytea(bytea, bytea, text, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('pgp_pub_decrypt_bytea()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.encrypt(bytea, bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('encrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.decrypt(bytea, bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('decrypt()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.encrypt_iv(bytea, bytea, bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('encrypt_iv()'); RETURN NULL; END
$fn$;

CREATE FUNCTION @extschema@.decrypt_iv(bytea, bytea, bytea, text) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
BEGIN PERFORM @extschema@._pgcrypto_unavailable('decrypt_iv()'); RETURN NULL; END
$fn$;
