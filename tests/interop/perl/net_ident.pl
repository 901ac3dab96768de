#!/usr/bin/perl
# Ask the ident server on REMOTE_ADDR port 113 through Net::Ident and print its conclusion.
#
# usage: net_ident.pl LOCAL_ADDR LOCAL_PORT REMOTE_ADDR REMOTE_PORT TIMEOUT
#
# Net::Ident::lookupFromInAddr asks about the connection LOCAL_ADDR:LOCAL_PORT <->
# REMOTE_ADDR:REMOTE_PORT: it connects from LOCAL_ADDR to REMOTE_ADDR:113 (the port comes
# from getservbyname("ident"), it cannot be changed) and sends "REMOTE_PORT,LOCAL_PORT".
# One tab-separated line:
#   USERID opsys userid
#   ERROR  token            (the server answered ERROR)
#   FAIL   message          (no usable answer: connect, timeout, parse or port mismatch)
use strict;
use warnings;
use Socket qw(inet_aton sockaddr_in);
use Net::Ident qw(lookupFromInAddr);

binmode STDOUT;
$| = 1;
my ($local_addr, $local_port, $remote_addr, $remote_port, $timeout) = @ARGV;
die "usage: $0 LOCAL_ADDR LOCAL_PORT REMOTE_ADDR REMOTE_PORT TIMEOUT\n" unless defined $timeout;

my ($userid, $opsys, $error) = lookupFromInAddr(
    sockaddr_in($local_port, inet_aton($local_addr)),
    sockaddr_in($remote_port, inet_aton($remote_addr)),
    $timeout,
);
if (defined $userid) {
    print join("\t", 'USERID', $opsys, $userid), "\n";
}
elsif (defined $opsys && $opsys eq 'ERROR') {
    print join("\t", 'ERROR', $error), "\n";
}
else {
    $error = 'unknown failure' unless defined $error;
    $error =~ s/\s+\z//;
    print join("\t", 'FAIL', $error), "\n";
}
exit 0;
