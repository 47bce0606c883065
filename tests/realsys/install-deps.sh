#!/bin/sh
# Install the real mail-system programs used by tests/realsys (Debian 12, root).
# Idempotent; ~15 s on a fresh machine (plus apt-get update).
set -eu
need=""
for p in postfix:postfix clamscan:clamav clamd:clamav-daemon spamd:spamd spamc:spamc; do
    prog=${p%%:*}; pkg=${p#*:}
    command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || need="$need $pkg"
done
[ -z "$need" ] && exit 0
# Without this preseed, noninteractive postfix picks "Internet Site" and writes
# a system /etc/postfix/main.cf; "No configuration" leaves /etc/postfix alone.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postfix clamav clamav-daemon spamassassin spamd spamc >/dev/null
