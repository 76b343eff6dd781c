-- SHA-1 (FIPS 180-4) on core PostgreSQL, which has md5() and sha224() to sha512() but no sha1:
-- 32-bit words kept in bigint, masked after every addition and rotation.
CREATE FUNCTION @extschema@.@sha1@(data bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
    mask CONSTANT bigint := 4294967295;
    h0 bigint := 1732584193;
    h1 bigint := 4023233417;
    h2 bigint := 2562383102;
    h3 bigint := 271733878;
    h4 bigint := 3285377520;
    msg bytea;
    w bigint[];
    a bigint; b bigint; c bigint; d bigint; e bigint; f bigint; k bigint; t bigint;
    base int;
BEGIN
    msg := data || '\x80'::bytea
        || decode(repeat('00', (119 - length(data) % 64) % 64), 'hex')
        || int8send(length(data)::bigint * 8);
    FOR chunk IN 0 .. length(msg) / 64 - 1 LOOP
        w := array_fill(0::bigint, ARRAY[80]);
        FOR i IN 0 .. 15 LOOP
            base := chunk * 64 + i * 4;
            w[i + 1] := (get_byte(msg, base)::bigint << 24) | (get_byte(msg, base + 1)::bigint << 16)
                | (get_byte(msg, base + 2)::bigint << 8) | get_byte(msg, base + 3)::bigint;
        END LOOP;
        FOR i IN 16 .. 79 LOOP
            t := ((w[i - 2] # w[i - 7]) # w[i - 13]) # w[i - 15];
            w[i + 1] := ((t << 1) | (t >> 31)) & mask;
        END LOOP;
        a := h0; b := h1; c := h2; d := h3; e := h4;
        FOR i IN 0 .. 79 LOOP
            IF i < 20 THEN
                f := (b & c) | (((~b) & mask) & d); k := 1518500249;
            ELSIF i < 40 THEN
                f := (b # c) # d; k := 1859775393;
            ELSIF i < 60 THEN
                f := ((b & c) | (b & d)) | (c & d); k := 2400959708;
            ELSE
                f := (b # c) # d; k := 3395469782;
            END IF;
            t := (((((a << 5) | (a >> 27)) & mask) + f + e + k + w[i + 1])) & mask;
            e := d;
            d := c;
            c := ((b << 30) | (b >> 2)) & mask;
            b := a;
            a := t;
        END LOOP;
        h0 := (h0 + a) & mask;
        h1 := (h1 + b) & mask;
        h2 := (h2 + c) & mask;
        h3 := (h3 + d) & mask;
        h4 := (h4 + e) & mask;
    END LOOP;
    RETURN substring(int8send(h0) FROM 5) || substring(int8send(h1) FROM 5)
        || substring(int8send(h2) FROM 5) || substring(int8send(h3) FROM 5)
        || substring(int8send(h4) FROM 5);
END
$fn$;
