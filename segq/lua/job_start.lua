-- The first task of a video job (its split) starts it: queued -> running, unless it is final (a
-- redelivery: the caller skips the work). A redelivery while running counts one more attempt.
-- KEYS[1]: the job. ARGV: now, worker, device.
-- Returns 1 (started), 0 (final: skip), -1 (no record).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if FINAL[state] then return 0 end
local created = tonumber(redis.call('HGET', KEYS[1], 'created_at'))
local wait = created and math.max(0, tonumber(ARGV[1]) - created) or 0
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1], 'worker', ARGV[2], 'device', ARGV[3],
           'queue_wait_s', string.format('%.6f', wait))
redis.call('HDEL', KEYS[1], 'error')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if state ~= 'running' then count_move(KEYS[1], state, 'running', ARGV[1], 0) end
return 1
