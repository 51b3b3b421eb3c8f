-- Where the relay may connect: link-local and cloud metadata addresses are
-- refused unless eo.http_allow_link_local is on, and eo.http_allowed_hosts
-- accepts only entries it can match.  Both settings are sighup: they are
-- changed with ALTER SYSTEM, pg_reload_conf() and a new session (\c), whose
-- backend the postmaster forks only after it has reloaded the files.
\set VERBOSITY default
CREATE EXTENSION IF NOT EXISTS eo_processing;
SHOW eo.http_allow_link_local;

-- Refused by default, with the reason and the setting to change.
SELECT eo.create_destination('meta', 'http', '{"url": "http://169.254.169.254/latest/meta-data/"}');
\set VERBOSITY terse
SELECT eo.create_destination('meta', 'http', '{"url": "https://169.254.0.1:8443/x"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://169.254.255.255/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://[fe80::1]/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://[FEBF:ffff::1]:8080/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://[fe80::1%25eth0]/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://[::ffff:169.254.169.254]/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://[::ffff:a9fe:a9fe]/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://[64:ff9b::169.254.169.254]/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://[fd00:ec2::254]/latest/meta-data/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://100.100.100.200/latest/meta-data/"}');
-- Other spellings of 169.254.169.254.
SELECT eo.create_destination('meta', 'http', '{"url": "http://2852039166/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://0xa9.0xfe.0xa9.0xfe/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://169.254.43518/"}');
SELECT eo.create_destination('meta', 'http', '{"url": "http://0251.0376.0251.0376/"}');
-- eo.alter_destination(), a direct INSERT or UPDATE (the table's trigger)
-- and eo.check_destination_options() refuse them too.
SELECT eo.create_destination('near', 'http', '{"url": "http://169.253.255.255/"}');
SELECT eo.alter_destination('near', '{"url": "http://169.254.169.254/"}');
INSERT INTO eo.destination (name, kind, options)
VALUES ('direct', 'http', '{"url": "http://[fe80::2]/"}');
UPDATE eo.destination SET options = '{"url": "http://100.100.100.200/"}' WHERE name = 'near';
SELECT eo.check_destination_options('http', '{"url": "http://169.254.169.254/"}');
SELECT name, options->>'url' AS url FROM eo.destination ORDER BY id;

-- The neighbours of the refused ranges are allowed, and so are host names:
-- what a name resolves to is checked when the relay connects.
SELECT eo.alter_destination('near', '{"url": "http://169.255.0.1/"}');
SELECT eo.alter_destination('near', '{"url": "http://100.100.100.201/"}');
SELECT eo.alter_destination('near', '{"url": "http://[fec0::1]/"}');
SELECT eo.alter_destination('near', '{"url": "http://[fd00:ec2::253]/"}');
SELECT eo.alter_destination('near', '{"url": "http://[::ffff:127.0.0.1]/"}');
SELECT eo.alter_destination('near', '{"url": "http://metadata.google.internal/"}');

-- With eo.http_allow_link_local on, they can be created and altered.
ALTER SYSTEM SET eo.http_allow_link_local = on;
SELECT pg_reload_conf();
\c
\set VERBOSITY terse
SHOW eo.http_allow_link_local;
SELECT eo.create_destination('meta', 'http', '{"url": "http://169.254.169.254/latest/meta-data/"}');
SELECT eo.alter_destination('near', '{"url": "http://[fd00:ec2::254]/"}');
SELECT eo.check_destination_options('http', '{"url": "http://[::ffff:169.254.169.254]/"}');
ALTER SYSTEM RESET eo.http_allow_link_local;
SELECT pg_reload_conf();
\c
\set VERBOSITY terse
SHOW eo.http_allow_link_local;
-- Existing destinations stay (the relay refuses to connect to them);
-- changing one needs the setting again.
SELECT name, options->>'url' AS url FROM eo.destination ORDER BY id;
SELECT eo.alter_destination('meta', '{"url": "http://169.254.169.254/other"}');
SELECT eo.alter_destination('meta', '{"url": "http://127.0.0.1:9/"}');

-- eo.http_allowed_hosts: entries that would match nothing are refused,
-- and ALTER SYSTEM writes nothing.
\set VERBOSITY default
ALTER SYSTEM SET eo.http_allowed_hosts = '*';
ALTER SYSTEM SET eo.http_allowed_hosts = '127.0.0.1:56910';
ALTER SYSTEM SET eo.http_allowed_hosts = 'http://127.0.0.1:56910/';
ALTER SYSTEM SET eo.http_allowed_hosts = 'hooks.example.com/path';
ALTER SYSTEM SET eo.http_allowed_hosts = '[::1]:8080';
ALTER SYSTEM SET eo.http_allowed_hosts = 'fe80::1%eth0';
ALTER SYSTEM SET eo.http_allowed_hosts = 'a.example.com,,b.example.com';
ALTER SYSTEM SET eo.http_allowed_hosts = 'a.example.com,';
ALTER SYSTEM SET eo.http_allowed_hosts = 'a.example.com, ""';
ALTER SYSTEM SET eo.http_allowed_hosts = 'hooks example.com';
ALTER SYSTEM SET eo.http_allowed_hosts = '"hooks example.com"';
ALTER SYSTEM SET eo.http_allowed_hosts = '*.';
ALTER SYSTEM SET eo.http_allowed_hosts = '.example.com';
ALTER SYSTEM SET eo.http_allowed_hosts = 'ex*ample.com';
ALTER SYSTEM SET eo.http_allowed_hosts = '*.*.example.com';
ALTER SYSTEM SET eo.http_allowed_hosts = 'user@example.com';
ALTER SYSTEM SET eo.http_allowed_hosts = 'a.example.com, *';
SELECT count(*) AS settings_written FROM pg_file_settings
 WHERE name = 'eo.http_allowed_hosts' AND sourcefile LIKE '%postgresql.auto.conf';
-- A SET in a session is refused whatever the value: the setting is sighup.
SET eo.http_allowed_hosts = 'hooks.example.com';

-- Entries it can match: names, "*." domains, IPv4 and IPv6 addresses (with
-- or without brackets); ports play no part in matching.
ALTER SYSTEM SET eo.http_allowed_hosts =
    'Hooks.Example.com, *.example.net, 192.0.2.10, ::1, [2001:db8::1], a-very-long-host-name-of-more-than-sixty-three-bytes.hooks.example.org';
SELECT pg_reload_conf();
\c
\set VERBOSITY terse
SHOW eo.http_allowed_hosts;
SELECT eo.check_destination_options('http', '{"url": "https://hooks.example.com/x"}') IS NOT NULL AS allowed;
SELECT eo.check_destination_options('http', '{"url": "https://a.b.example.net:8443/x"}') IS NOT NULL AS allowed;
SELECT eo.check_destination_options('http', '{"url": "http://192.0.2.10:8080/x"}') IS NOT NULL AS allowed;
SELECT eo.check_destination_options('http', '{"url": "http://[::1]:9/x"}') IS NOT NULL AS allowed;
SELECT eo.check_destination_options('http', '{"url": "http://[2001:db8:0::1]/x"}') IS NOT NULL AS allowed;
SELECT eo.check_destination_options('http', '{"url": "http://a-very-long-host-name-of-more-than-sixty-three-bytes.hooks.example.org/"}') IS NOT NULL AS allowed;
SELECT eo.check_destination_options('http', '{"url": "http://example.net/x"}');
SELECT eo.check_destination_options('http', '{"url": "http://127.0.0.1/x"}');
SELECT eo.check_destination_options('http', '{"url": "http://evilhooks.example.com/x"}');
ALTER SYSTEM RESET eo.http_allowed_hosts;
SELECT pg_reload_conf();
\c
SHOW eo.http_allowed_hosts;

SELECT eo.drop_destination('meta');
SELECT eo.drop_destination('near');
DROP EXTENSION eo_processing;
