-- Open batch ARGV[1] for a submission: create it, or reopen an existing one of the same task,
-- model and priority (a resubmission adds what it does not hold yet), and take its submission
-- lock for ARGV[9] seconds (token ARGV[8]; one submission adds to a batch at a time). Unsealed
-- until batch_seal. A new batch claims the image-id namespace ARGV[6] (segq.protocol). The shard
-- message template of its model, task and priority (ARGV[7], segq.messages.template) is kept once
-- for all such batches. Its next shard number is taken for the submission's first shard. What the
-- submission needs to know of the fleet comes back in the same step: the model's task slots (0:
-- no live worker serves it) and the fleet's last measured seconds of work per image of the model
-- (segq:stats image_s|<model>, written by the workers as shards end). The batch's counters are
-- not written: they count from 0 when a move first touches them.
-- ARGV: name, task, model, priority, now, namespace, template, lock token, lock seconds.
-- Returns {created (0/1), jobs, namespace, shards before, the first shard number, slots, seconds
-- per image ('' when unknown)}; {-1} when the namespace is taken (draw another); {-2} when another
-- submission holds the lock; an error naming what does not match.
local name, task, model, priority, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local bkey = batch_key(name)
local have = redis.call('HMGET', bkey, 'task', 'model', 'priority', 'jobs', 'ns', 'shards')
if have[1] and (have[1] ~= task or have[2] ~= model) then
  return redis.error_reply('batch ' .. name .. ' is a ' .. have[1] .. ' batch on model ' .. have[2] ..
                           ', not ' .. task .. ' on ' .. model .. ': choose another --batch name')
end
if have[1] and have[3] ~= priority then
  return redis.error_reply('batch ' .. name .. ' has priority ' .. have[3] .. ', not ' .. priority ..
                           ': resubmit it with --priority ' .. have[3])
end
local holder = redis.call('GET', bkey .. ':submitting')
if holder and holder ~= ARGV[8] then return {-2} end
redis.call('SET', bkey .. ':submitting', ARGV[8], 'EX', ARGV[9])
redis.call('SET', template_key(model, task, priority), ARGV[7], 'NX')
local fleet = {slots(model), redis.call('HGET', STATS, 'image_s|' .. model) or ''}
if have[1] then
  redis.call('HSET', bkey, 'sealed', '0')
  reopen_batch(name)
  return {0, num(have[4]), have[5] or '', num(have[6]), redis.call('HINCRBY', bkey, 'shards', 1) - 1,
          fleet[1], fleet[2]}
end
if not redis.call('SET', namespace_key(ARGV[6]), name, 'NX') then
  redis.call('DEL', bkey .. ':submitting')
  return {-1}
end
redis.call('HSET', bkey, 'task', task, 'model', model, 'priority', priority, 'created_at', now, 'sealed', '0',
           'ns', ARGV[6], 'shards', 1)
redis.call('ZADD', '$batches_index', now, name)
redis.call('SADD', '$active_batches', name)
return {1, 0, ARGV[6], 0, 0, fleet[1], fleet[2]}
