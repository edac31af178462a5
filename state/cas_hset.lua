-- Versioned compare-and-set of fields in users' hashes (appetence Redis contract).
-- KEYS[1..n] the users' hash keys (one call carries a chunk of users: one script call and
--            one reply per chunk instead of per user; on Redis Cluster chunks hold one key)
-- ARGV[1]    TTL in milliseconds, refreshed on a hash whenever at least one of its fields is
--            written
-- ARGV[2..]  for each key in order: the number m of its fields, then m triples: field name,
--            version (integer), payload
-- A field is written only if its version is strictly greater than <field>_version, so a
-- replayed or stale write never overwrites a newer one. Returns {written, stale}, summed.
local written, stale = 0, 0
local at = 2
for k = 1, #KEYS do
  local key = KEYS[k]
  local fields = tonumber(ARGV[at])
  local wrote = false
  at = at + 1
  for _ = 1, fields do
    local field, version, payload = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2]
    local current = tonumber(redis.call('HGET', key, field .. '_version') or '-1')
    if version > current then
      redis.call('HSET', key, field, payload, field .. '_version', ARGV[at + 1])
      written = written + 1
      wrote = true
    else
      stale = stale + 1
    end
    at = at + 3
  end
  if wrote then
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return {written, stale}
