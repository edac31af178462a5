-- Versioned compare-and-set of fields in one user's hash (appetence Redis contract).
-- KEYS[1]  the user's hash key
-- ARGV[1]  TTL in milliseconds, refreshed whenever at least one field is written
-- ARGV[2..] triples: field name, version (integer), payload
-- A field is written only if its version is strictly greater than <field>_version, so a
-- replayed or stale write never overwrites a newer one. Returns {written, stale}.
local written, stale = 0, 0
for i = 2, #ARGV, 3 do
  local field, version, payload = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local current = tonumber(redis.call('HGET', KEYS[1], field .. '_version') or '-1')
  if version > current then
    redis.call('HSET', KEYS[1], field, payload, field .. '_version', ARGV[i + 1])
    written = written + 1
  else
    stale = stale + 1
  end
end
if written > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {written, stale}
