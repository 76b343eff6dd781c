-- uuid-ossp's functions, same signatures, volatility and results, on core PostgreSQL: v3 from
-- md5(), v4 from gen_random_uuid(), v5 from the SHA-1 above, v1 from the clock with a random
-- node (multicast bit set, as v1mc: a tenant learns no host address).

CREATE FUNCTION @extschema@.uuid_nil() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '00000000-0000-0000-0000-000000000000'::uuid;

CREATE FUNCTION @extschema@.uuid_ns_dns() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::uuid;

CREATE FUNCTION @extschema@.uuid_ns_url() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b811-9dad-11d1-80b4-00c04fd430c8'::uuid;

CREATE FUNCTION @extschema@.uuid_ns_oid() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b812-9dad-11d1-80b4-00c04fd430c8'::uuid;

CREATE FUNCTION @extschema@.uuid_ns_x500() RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN '6ba7b814-9dad-11d1-80b4-00c04fd430c8'::uuid;

-- The first 16 bytes of a hash as a name-based UUID of `version` (RFC 9562, section 5).
CREATE FUNCTION @extschema@._uuid_ossp_from_hash(hash bytea, version int) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN encode(
    set_byte(
        set_byte(substring(hash FROM 1 FOR 16), 6, (get_byte(hash, 6) & 15) | (version << 4)),
        8, (get_byte(hash, 8) & 63) | 128),
    'hex')::uuid;

CREATE FUNCTION @extschema@.uuid_generate_v3(namespace uuid, name text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN @extschema@._uuid_ossp_from_hash(
    decode(md5(uuid_send(namespace) || convert_to(name, 'UTF8')), 'hex'), 3);

CREATE FUNCTION @extschema@.uuid_generate_v4() RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE
RETURN gen_random_uuid();

CREATE FUNCTION @extschema@.uuid_generate_v5(namespace uuid, name text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN @extschema@._uuid_ossp_from_hash(
    @extschema@.@sha1@(uuid_send(namespace) || convert_to(name, 'UTF8')), 5);

-- Time-based: 100-ns ticks since 1582-10-15, a random clock sequence and a random node.
CREATE FUNCTION @extschema@.uuid_generate_v1mc() RETURNS uuid
LANGUAGE plpgsql VOLATILE STRICT PARALLEL SAFE AS $fn$
DECLARE
    ticks bigint := (extract(epoch FROM clock_timestamp()) * 10000000)::bigint
        + 122192928000000000;
    noise bytea := uuid_send(gen_random_uuid());
    node bytea := substring(noise FROM 11 FOR 6);
    clock_seq int := ((get_byte(noise, 0) << 8) | get_byte(noise, 1)) & 16383;
BEGIN
    node := set_byte(node, 0, get_byte(node, 0) | 1);
    RETURN (lpad(to_hex(ticks & 4294967295), 8, '0')
        || lpad(to_hex((ticks >> 32) & 65535), 4, '0')
        || lpad(to_hex(((ticks >> 48) & 4095) | 4096), 4, '0')
        || lpad(to_hex(clock_seq | 32768), 4, '0')
        || encode(node, 'hex'))::uuid;
END
$fn$;

CREATE FUNCTION @extschema@.uuid_generate_v1() RETURNS uuid
LANGUAGE sql VOLATILE STRICT PARALLEL SAFE
RETURN @extschema@.uuid_generate_v1mc();
