-- Versioned compare-and-set of one user's audience field AND their audience segments.
-- KEYS[1]   the user's hash key; KEYS[2..] the segment sorted sets this write touches
-- ARGV[1]   TTL in milliseconds (the hash and every segment written are refreshed)
-- ARGV[2]   field name, ARGV[3] version, ARGV[4] payload, ARGV[5] the user id
-- ARGV[6..] triples: index into KEYS to remove the user from (0: none), index to add them
--           to (0: none), score
-- Nothing is written unless the version is strictly greater than <field>_version: a
-- replayed or stale write moves no one back. Returns {written, stale}.
local field, version = ARGV[2], tonumber(ARGV[3])
local current = tonumber(redis.call('HGET', KEYS[1], field .. '_version') or '-1')
if version <= current then
  return {0, 1}
end
redis.call('HSET', KEYS[1], field, ARGV[4], field .. '_version', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local user = ARGV[5]
for i = 6, #ARGV, 3 do
  local old, new, score = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2]
  if old > 0 then
    redis.call('ZREM', KEYS[old], user)
  end
  if new > 0 then
    redis.call('ZADD', KEYS[new], score, user)
    redis.call('PEXPIRE', KEYS[new], ARGV[1])
  end
end
return {1, 0}
