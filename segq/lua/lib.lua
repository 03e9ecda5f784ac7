-- segq's Lua library: prepended to every script by segq.scripts, which fills in the dollar names
-- from segq.keys and segq.states. Every key is derived here, from the names the caller passes.

local FINAL = {$final_states}
local RETRYABLE = {$retryable_states}
local PRIORITIES = {$priorities}

local function job_key(id) return '$job_prefix' .. id end
local function batch_key(name) return '$batch_prefix' .. name end
local function batch_jobs_key(name) return '$batch_prefix' .. name .. ':jobs' end
local function batch_inputs_key(name) return '$batch_prefix' .. name .. ':inputs' end
local function pending_key(name) return '$batch_prefix' .. name .. ':pending' end
local function shards_key(name) return '$batch_prefix' .. name .. ':shards' end
local function template_key(model, task, priority)
  return '$template_prefix' .. 'v$payload_version:' .. model .. ':' .. task .. ':' .. priority
end
local function losses_key(name) return '$batch_prefix' .. name .. ':losses' end
local function namespace_key(ns) return '$namespace_prefix' .. ns end
local function ring_key(model, priority) return '$ring_prefix' .. model .. ':' .. priority end
local function queue_key(model) return '$queue_prefix' .. model end
local PENDING_COUNTS = '$pending_counts'
local INFLIGHT = '$inflight'
local STATS = '$stats'
local HIST = '$histograms'
local SLOTS = '$slots'

local function num(v) return tonumber(v) or 0 end

-- HINCRBY by N, skipped when N is 0 (Redis refuses Lua's '-0' as no integer).
local function incr(key, field, n)
  if n ~= 0 then redis.call('HINCRBY', key, field, n) end
end

-- Add a worker's histogram observations (segq.metrics.Tally.to_json: field -> increment; sums,
-- the fields ending in '|sum', are floats).
local function hist_add(raw)
  if not raw or raw == '' then return end
  for field, n in pairs(cjson.decode(raw)) do
    if string.sub(field, -4) == '|sum' then
      redis.call('HINCRBYFLOAT', HIST, field, n)
    else
      redis.call('HINCRBY', HIST, field, n)
    end
  end
end

-- Join BATCH to the ring of its model and priority, at the back of the line, unless it stands
-- in it; N more messages of it are pending.
local function pending_more(batch, model, priority, n)
  redis.call('PERSIST', pending_key(batch))
  redis.call('HINCRBY', PENDING_COUNTS, model .. '|' .. priority, n)
  if redis.call('HSETNX', batch_key(batch), 'inring', '1') == 1 then
    -- the ring's consuming end is the right one (RPOP): a batch joins at the left, the back
    redis.call('LPUSH', ring_key(model, priority), batch)
  end
end

-- Queue ENTRIES ("<task id> <message>") of BATCH behind its other pending work, or in front of
-- it (FRONT: a video's chunks and its assembly go first, so a started video finishes before the
-- batch's next job begins); the batch joins its model's ring of its priority if it is not in it.
local function enqueue(batch, entries, front)
  if #entries == 0 then return 0 end
  local meta = redis.call('HMGET', batch_key(batch), 'model', 'priority')
  if not meta[1] then return redis.error_reply('no batch ' .. batch) end
  local pkey = pending_key(batch)
  -- the consuming end is the right one (RPOP): FIFO is LPUSH; the front is RPUSH, in reverse
  if front then
    for i = #entries, 1, -1 do redis.call('RPUSH', pkey, entries[i]) end
  else
    for i = 1, #entries do redis.call('LPUSH', pkey, entries[i]) end
  end
  pending_more(batch, meta[1], meta[2], #entries)
  return #entries
end

-- Queue shard K of BATCH behind its other pending work. Consecutive shards share one entry,
-- '@<first> <last>' (the batch's message template makes each one's message when it is
-- released), so pending work costs Redis the same for ten shards or a hundred thousand.
local function enqueue_shard(batch, k)
  local meta = redis.call('HMGET', batch_key(batch), 'model', 'priority')
  if not meta[1] then return redis.error_reply('no batch ' .. batch) end
  local pkey = pending_key(batch)
  local back = redis.call('LINDEX', pkey, 0)
  local first, last
  if back then first, last = string.match(back, '^@(%d+) (%d+)$$') end
  if last and tonumber(last) == k - 1 then
    redis.call('LSET', pkey, 0, '@' .. first .. ' ' .. k)
  else
    redis.call('LPUSH', pkey, '@' .. k .. ' ' .. k)
  end
  pending_more(batch, meta[1], meta[2], 1)
  return 1
end

-- The message of shard FIRST of BATCH (of MODEL, TASK, at PRIORITY), from the template of the
-- batch's model, task and priority: its task id and body (nil when there is no template).
local function shard_message(batch, model, task, priority, first)
  local template = redis.call('GET', template_key(model, task, priority))
  if not template then return nil, nil end  -- the batch expired under it: nothing to send
  local name = string.format('%06d', first)
  local body = string.gsub(string.gsub(template, '@@B@@', batch), '@@N@@', name)
  return 'shard:' .. batch .. ':' .. name, body
end

-- The next message of BATCH's (of MODEL, at PRIORITY) pending ENTRY: its task id and body. A
-- shard range releases its first shard and puts the rest back in front (where it was).
local function next_message(batch, model, priority, pkey, entry)
  if string.sub(entry, 1, 1) ~= '@' then
    local sep = string.find(entry, ' ', 1, true)
    return string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  end
  local first, last = string.match(entry, '^@(%d+) (%d+)$$')
  first, last = tonumber(first), tonumber(last)
  if first < last then redis.call('RPUSH', pkey, '@' .. (first + 1) .. ' ' .. last) end
  local task = redis.call('HGET', batch_key(batch), 'task')
  if not task then return nil, nil end
  return shard_message(batch, model, task, priority, first)
end

-- The queue target of MODEL: the task slots of the live workers that serve it (segq.registry
-- keeps the counts).
local function slots(model)
  return num(redis.call('HGET', SLOTS, model))
end

-- Release shard K of BATCH (of MODEL, TASK, at PRIORITY) into its model's queue at once, when
-- nothing waits ahead of it: no pending work of the batch, no batch of its model at its priority
-- or a higher one waiting its turn, and room in the queue (fewer messages than the model's
-- slots). What dispatch would do, without the detour through the pending list and the ring.
-- Returns 1 when released, 0 when it must wait its turn.
local function release_now(batch, model, task, priority, k, now)
  if redis.call('LLEN', pending_key(batch)) > 0 then return 0 end
  for _, p in ipairs(PRIORITIES) do
    if redis.call('LLEN', ring_key(model, p)) > 0 then return 0 end
    if p == priority then break end
  end
  if redis.call('LLEN', queue_key(model)) >= slots(model) then return 0 end
  local task_id, body = shard_message(batch, model, task, priority, k)
  if not task_id then return 0 end
  redis.call('LPUSH', queue_key(model), body)
  redis.call('ZADD', INFLIGHT, now, task_id)
  return 1
end

-- Release work of MODEL into its queue until the queue holds TARGET messages (nil: its slots):
-- high before normal before low; within a priority, one task per batch in turn (round robin).
-- Each released task is recorded in flight (INFLIGHT, scored by NOW) for the watchdog. Returns
-- how many moved.
local function dispatch(model, target, now)
  target = target or slots(model)
  local queue = queue_key(model)
  local length = redis.call('LLEN', queue)
  local moved = 0
  while length < target do
    local released = false
    for _, priority in ipairs(PRIORITIES) do
      local ring = ring_key(model, priority)
      local batch = redis.call('LINDEX', ring, -1)
      while batch do
        local pkey = pending_key(batch)
        local entry = redis.call('RPOP', pkey)
        if entry then
          local task_id, body = next_message(batch, model, priority, pkey, entry)
          redis.call('HINCRBY', PENDING_COUNTS, model .. '|' .. priority, -1)
          if task_id then
            redis.call('LPUSH', queue, body)
            redis.call('ZADD', INFLIGHT, now, task_id)
          end
          if redis.call('LLEN', pkey) == 0 then
            redis.call('RPOP', ring)
            redis.call('HDEL', batch_key(batch), 'inring')
          else
            redis.call('RPOPLPUSH', ring, ring)  -- its turn is over: to the back of the line
          end
          released = task_id ~= nil
          if released then break end
        else
          -- a batch with nothing pending (canceled, expired): out of the ring
          redis.call('RPOP', ring)
          redis.call('HDEL', batch_key(batch), 'inring')
        end
        batch = redis.call('LINDEX', ring, -1)
      end
      if released then break end
    end
    if not released then break end
    length = length + 1
    moved = moved + 1
  end
  return moved
end

-- Every key of BATCH but its hash, which expire and persist with it.
local function batch_keys(batch, ns)
  local out = {batch_jobs_key(batch), batch_inputs_key(batch), pending_key(batch), shards_key(batch),
               losses_key(batch)}
  if ns and ns ~= '' then table.insert(out, namespace_key(ns)) end
  return out
end

-- A batch with no queued or running job left, once its submission is sealed, is finished: it
-- gets its end time and its keys expire TTL seconds later (as its jobs' records do). Returns 1
-- when it finished now.
local function maybe_finish_batch(batch, now, ttl)
  local bkey = batch_key(batch)
  local b = redis.call('HMGET', bkey, 'queued', 'running', 'sealed', 'finished_at', 'ns')
  if b[3] ~= '1' or num(b[1]) > 0 or num(b[2]) > 0 or b[4] then return 0 end
  redis.call('HSET', bkey, 'finished_at', now)
  redis.call('SREM', '$active_batches', batch)
  redis.call('EXPIRE', bkey, ttl)
  for _, key in ipairs(batch_keys(batch, b[5])) do redis.call('EXPIRE', key, ttl) end
  return 1
end

-- A job of a batch moved from state FROM to state TO: the batch's counters follow, in the same
-- script as the move. Returns 1 when that finished the batch.
local function count_move(jkey, from, to, now, ttl)
  local batch = redis.call('HGET', jkey, 'batch')
  if not batch or batch == '' then return 0 end
  local bkey = batch_key(batch)
  if redis.call('EXISTS', bkey) == 0 then return 0 end
  if from then redis.call('HINCRBY', bkey, from, -1) end
  redis.call('HINCRBY', bkey, to, 1)
  if FINAL[to] then return maybe_finish_batch(batch, now, ttl) end
  return 0
end

-- A finished batch that gets work again (a retry, a resubmission) is open again: no end time,
-- no expiry, not canceled.
local function reopen_batch(batch)
  local bkey = batch_key(batch)
  redis.call('HDEL', bkey, 'finished_at', 'manifest_at', 'canceled_at')
  redis.call('SADD', '$active_batches', batch)
  redis.call('PERSIST', bkey)
  for _, key in ipairs(batch_keys(batch, redis.call('HGET', bkey, 'ns'))) do redis.call('PERSIST', key) end
end

-- The state of shard K of BATCH (segq.shards.ShardState), or nil.
local function shard_get(batch, k)
  local raw = redis.call('HGET', shards_key(batch), k)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function shard_put(batch, k, st)
  redis.call('HSET', shards_key(batch), k, cjson.encode(st))
end

-- Images of a batch that ended in a shard: the batch's counters and the fleet's job counters.
local function count_images(batch, model, done, failed, canceled)
  local bkey = batch_key(batch)
  incr(bkey, 'done', done)
  incr(bkey, 'failed', failed)
  incr(bkey, 'canceled', canceled)
  incr(bkey, 'frames_done', done)
  incr(STATS, 'jobs|done|image|' .. model, done)
  incr(STATS, 'jobs|failed|image|' .. model, failed)
  incr(STATS, 'jobs|canceled|image|' .. model, canceled)
  incr(STATS, 'frames|' .. model, done)
end

-- The message of task TASK_ID (delivery TAG, '' for none) is done with: it is no longer in
-- flight; its lease and kombu's record of it as unacknowledged go, so its acknowledgement needs
-- no other step (and one a closed channel can no longer send is not missed).
local function task_done(task_id, tag)
  redis.call('ZREM', INFLIGHT, task_id)
  redis.call('HDEL', INFLIGHT .. ':suspect', task_id)
  if tag and tag ~= '' then
    redis.call('ZREM', '$leases', tag)
    redis.call('DEL', '$lease_prefix' .. tag)
    redis.call('ZREM', '$kombu_unacked_index', tag)
    redis.call('HDEL', '$kombu_unacked', tag)
  end
end
