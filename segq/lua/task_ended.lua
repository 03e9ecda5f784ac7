-- A task ended (it ran, or was skipped) and its message is done with: it is no longer in flight;
-- its lease and kombu's record of the message as unacknowledged go (so the acknowledgement
-- needs no other step, and one that a closed channel can no longer send is not missed); and its
-- slot releases the next pending work of its model.
-- ARGV: task id, model ('' for none), target ('' for the model's slots), now, delivery tag ('').
-- Returns how many messages were released.
redis.call('ZREM', INFLIGHT, ARGV[1])
redis.call('HDEL', INFLIGHT .. ':suspect', ARGV[1])
local tag = ARGV[5]
if tag and tag ~= '' then
  redis.call('ZREM', '$leases', tag)
  redis.call('DEL', '$lease_prefix' .. tag)
  redis.call('ZREM', '$kombu_unacked_index', tag)
  redis.call('HDEL', '$kombu_unacked', tag)
end
if ARGV[2] == '' then return 0 end
return dispatch(ARGV[2], tonumber(ARGV[3]), ARGV[4])
