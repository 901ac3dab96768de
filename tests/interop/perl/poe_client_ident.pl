#!/usr/bin/perl
# Ask our ident server through POE::Component::Client::Ident and print what it concluded.
#
# usage: poe_client_ident.pl IDENT_PORT PEER_ADDR SOCK_ADDR TIMEOUT PEERPORT:SOCKPORT...
#
# Every PEERPORT:SOCKPORT pair is one query ("PEERPORT, SOCKPORT"), all in flight at once.
# One line per answer, tab separated, in the order the answers arrive:
#   PEERPORT SOCKPORT USERID opsys userid
#   PEERPORT SOCKPORT ERROR  token
# The client reads one CR LF line and reports any transport or parse failure, and a
# mismatching port pair, as the error "UKNOWN-ERROR" (sic).
use strict;
use warnings;
use POE qw(Component::Client::Ident);

binmode STDOUT;
$| = 1;
my ($ident_port, $peer_addr, $sock_addr, $timeout, @pairs) = @ARGV;
die "usage: $0 IDENT_PORT PEER_ADDR SOCK_ADDR TIMEOUT PEERPORT:SOCKPORT...\n" unless @pairs;

POE::Component::Client::Ident->spawn('ident-client');

POE::Session->create(
    inline_states => {
        _start => sub {
            my $kernel = $_[KERNEL];
            $_[HEAP]{left} = scalar @pairs;
            for my $pair (@pairs) {
                my ($peer_port, $sock_port) = split /:/, $pair;
                $kernel->post(
                    'ident-client' => query =>
                    IdentPort => $ident_port,
                    PeerAddr  => $peer_addr,
                    PeerPort  => $peer_port,
                    SockAddr  => $sock_addr,
                    SockPort  => $sock_port,
                    TimeOut   => $timeout,
                );
            }
        },
        ident_client_reply => sub {
            my ($query, $opsys, $userid) = @_[ARG0 .. ARG2];
            print join("\t", $query->{PeerPort}, $query->{SockPort}, 'USERID', $opsys, $userid), "\n";
            done(@_);
        },
        ident_client_error => sub {
            my ($query, $error) = @_[ARG0, ARG1];
            print join("\t", $query->{PeerPort}, $query->{SockPort}, 'ERROR', $error), "\n";
            done(@_);
        },
    },
);

sub done {
    my ($kernel, $heap) = @_[KERNEL, HEAP];
    $kernel->call('ident-client' => 'shutdown') if --$heap->{left} == 0;
}

POE::Kernel->run();
exit 0;
