-- The new store: `app` (created by POSTGRES_DB) is the mirror of legacy, `newapp` the new contract.
CREATE DATABASE newapp;
