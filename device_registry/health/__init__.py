"""Device and gateway health: the pure judgement (``core``) and the queries that feed it
(``store``)."""
