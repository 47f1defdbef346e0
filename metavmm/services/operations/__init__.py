"""The operations engine: every change the broker makes is a durable plan of idempotent steps.

- :mod:`.plan`: steps as declared and as stored in the operation row;
- :mod:`.store`: submit (idempotency keys), claim and fenced writes, events, cancel;
- :mod:`.executor`: runs steps with retries, backoff, cancel and rollback; resumes after a crash;
- :mod:`.actions`, :mod:`.vm_actions`, :mod:`.disk_actions`: the registry of step actions and the broker's own;
- :mod:`.flows`: the plans of provision, power actions, delete, live and cold migration;
- :mod:`.queue`: procrastinate workers for several brokers on one PostgreSQL catalog;
- :mod:`.reconcile`: the loop that compares the catalog with every provider.
"""
