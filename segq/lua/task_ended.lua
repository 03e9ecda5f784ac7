-- A task ended (it ran, or was skipped) and its message is done with (task_done), and its slot
-- releases the next pending work of its model.
-- ARGV: task id, model ('' for none), target ('' for the model's slots), now, delivery tag ('').
-- Returns how many messages were released.
task_done(ARGV[1], ARGV[5])
if ARGV[2] == '' then return 0 end
return dispatch(ARGV[2], tonumber(ARGV[3]), ARGV[4])
