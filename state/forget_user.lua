-- Forget one user: delete their hash and remove them from the given segment sorted sets,
-- unless the hash already holds data newer than the forget request (the user came back
-- after it; a replayed request must not erase that).
-- KEYS[1] = the user's hash; KEYS[2..n] = segment sorted sets
-- ARGV[1] = version limit (request time in ms x 1000 + 999); ARGV[2] = the user id
local limit = tonumber(ARGV[1])
local versions = redis.call('HMGET', KEYS[1], 'profile_version', 'recipes_version')
for _, v in ipairs(versions) do
  if v and tonumber(v) > limit then
    return 0
  end
end
local removed = redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  removed = removed + redis.call('ZREM', KEYS[i], ARGV[2])
end
return removed + 1
