-- Move a job to a final state unless it already is in one (a canceled job stays canceled even if
-- its last task finishes afterwards); its record expires TTL seconds after its end; its batch's
-- counters and the fleet's job counters follow. KEYS[1]: the job. ARGV: state, ttl, now, frames,
-- inference seconds, fps, then field/value pairs. Returns 1 (moved), 2 (moved, and that finished
-- its batch: write the manifest), 0 (already final), -1 (no record).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if FINAL[state] then return 0 end
local to, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
redis.call('HSET', KEYS[1], 'state', to)
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for _, key in ipairs({KEYS[1], KEYS[1] .. ':chunks', KEYS[1] .. ':chunkinfo', KEYS[1] .. ':losses'}) do
  redis.call('EXPIRE', key, ttl)
end
local meta = redis.call('HMGET', KEYS[1], 'kind', 'model', 'batch')
local kind, model = meta[1] or 'unknown', meta[2] or 'unknown'
redis.call('HINCRBY', STATS, 'jobs|' .. to .. '|' .. kind .. '|' .. model, 1)
if to == 'done' then
  redis.call('HINCRBY', STATS, 'frames|' .. model, num(ARGV[4]))
  redis.call('HINCRBYFLOAT', STATS, 'inference_s|' .. model, num(ARGV[5]))
  if num(ARGV[6]) > 0 then redis.call('HSET', STATS, 'last_fps|' .. kind .. '|' .. model, ARGV[6]) end
end
return 1 + count_move(KEYS[1], state, to, now, ttl)
