"""The demo catalog for `make run`: a Network+ Fundamentals outline with every kind of activity.

Idempotent: an activity is created once, keyed by its slug; one that exists is left as it is
(staff may have edited it), and its questions are only written when it is created.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction

from .captions import captions_from_transcript
from .models import Activity, ActivityKind, Question

# Points offered to the instructor when placing an item (the LMS column's maximum).
DEFAULT_POINTS = {
    ActivityKind.SECTION_HEADER: Decimal("1"),
    ActivityKind.READING: Decimal("5"),
    ActivityKind.VIDEO: Decimal("5"),
    ActivityKind.CUSTOM_QUIZ: Decimal("10"),
    ActivityKind.LAB: Decimal("20"),
    ActivityKind.PRACTICE_TEST: Decimal("25"),
    ActivityKind.COMPETENCY_ASSESSMENT: Decimal("50"),
}

S, R, V, Q, L, P, C = (
    ActivityKind.SECTION_HEADER,
    ActivityKind.READING,
    ActivityKind.VIDEO,
    ActivityKind.CUSTOM_QUIZ,
    ActivityKind.LAB,
    ActivityKind.PRACTICE_TEST,
    ActivityKind.COMPETENCY_ASSESSMENT,
)


def mc(prompt: str, choices: list[str], right: int) -> dict:
    return {"prompt": prompt, "choices": choices, "answer": right}


def free(prompt: str, accepted: list[str]) -> dict:
    return {"prompt": prompt, "choices": [], "answer": accepted}


# (slug, kind, title, summary, body, questions); a section header starts a section.
OUTLINE: list[tuple[str, ActivityKind, str, str, str, list[dict]]] = [
    ("netplus-s1", S, "Section 1: Networking Concepts",
     "Models, layers and how data moves between hosts.", "", []),
    ("netplus-osi-reading", R, "The OSI and TCP/IP models",
     "Why networks are described in layers, and what each layer does.",
     """Networks are built from many cooperating pieces of hardware and software. To reason about them, engineers describe a network as a stack of layers, each of which offers a service to the layer above it and relies on the layer below. The Open Systems Interconnection (OSI) model has seven layers; the TCP/IP model that the Internet actually runs on folds them into four.

From the bottom up, the OSI layers are Physical (1), Data Link (2), Network (3), Transport (4), Session (5), Presentation (6) and Application (7). The Physical layer moves raw bits over copper, fibre or radio. The Data Link layer frames those bits and delivers them between devices on the same segment, using MAC addresses; switches work here. The Network layer moves packets between networks using logical (IP) addresses; routers work here.

The Transport layer gives applications an end-to-end channel. TCP provides reliable, ordered delivery with a three-way handshake (SYN, SYN-ACK, ACK), acknowledgements and retransmission; UDP sends independent datagrams with no delivery guarantee and much less overhead, which suits voice, video and DNS lookups. Port numbers at this layer identify which application a segment belongs to.

The upper three layers are often handled by the application itself. The Session layer opens, manages and closes conversations; the Presentation layer handles formats, character sets and encryption; the Application layer is where protocols such as HTTP, SMTP and DNS live.

When a host sends data, each layer wraps the data from the layer above with its own header: this is encapsulation. A web request becomes a TCP segment, then an IP packet, then an Ethernet frame, then bits on the wire. The receiving host reverses the process, each layer removing its header. Troubleshooting often follows the same ladder: check the cable and link lights before blaming the application.""",
     []),
    ("netplus-encapsulation-video", V, "Encapsulation, step by step",
     "A six-minute walkthrough of a web request travelling down and up the stack.",
     """[00:00] Hi, and welcome back. In this video we follow one web request from a browser to a web server and watch what happens at each layer.

[00:20] The user types a web address. The browser builds an HTTP GET request. That request is just application data: the layers below do not care what is inside it.

[01:05] The transport layer takes the data and adds a TCP header. The header carries a source port, a random high port chosen by the client, and a destination port, 443 for HTTPS. It also carries sequence and acknowledgement numbers so that lost segments can be sent again. We now call the unit a segment.

[02:10] The network layer adds an IP header with the source and destination IP addresses. Now we have a packet. Routers along the way read only this header to decide where the packet goes next, and they decrement the time-to-live so that a packet caught in a loop eventually dies.

[03:15] The data link layer adds an Ethernet header and trailer: destination and source MAC addresses and a frame check sequence. The destination MAC is not the web server's: it is the MAC of the default gateway, learned with ARP, because the server is on another network.

[04:20] Finally the physical layer turns the frame into electrical signals, light or radio waves.

[05:00] At the server everything runs in reverse: the frame is checked and stripped, the packet is delivered to the IP stack, the segment goes to the process listening on port 443, and the web server finally sees the HTTP request. Remember the order of the units: data, segment, packet, frame, bits. See you in the next video.""",
     []),
    ("netplus-osi-quiz", Q, "Quiz: the OSI model",
     "Five questions on layers and encapsulation. One attempt unless your instructor allows more.", "",
     [
         mc("At which OSI layer do routers make forwarding decisions?",
            ["Layer 2, Data Link", "Layer 3, Network", "Layer 4, Transport", "Layer 7, Application"], 1),
         mc("Which protocol provides reliable, ordered delivery with a three-way handshake?",
            ["UDP", "ICMP", "TCP", "ARP"], 2),
         mc("What is the unit of data called at the Data Link layer?",
            ["Segment", "Packet", "Frame", "Datagram"], 2),
         mc("Which addresses does a switch use to forward traffic?",
            ["IP addresses", "MAC addresses", "Port numbers", "Host names"], 1),
         mc("A host sends traffic to a server on another network. Which destination MAC address is in the frame that leaves the host?",
            ["The server's MAC address", "The broadcast address FF:FF:FF:FF:FF:FF", "The default gateway's MAC address", "The DNS server's MAC address"], 2),
     ]),
    ("netplus-s2", S, "Section 2: Ports, Protocols and Addressing",
     "Well-known ports, IPv4 addressing and subnetting.", "", []),
    ("netplus-ipv4-reading", R, "IPv4 addressing and subnetting",
     "How an IPv4 address and its mask split a network into subnets.",
     """An IPv4 address is 32 bits long, written as four decimal octets such as 192.168.10.25. Every address has two parts: the network portion, shared by all hosts on the same subnet, and the host portion, unique to each interface. The subnet mask, or its CIDR prefix length, says where the split is: 255.255.255.0 is the same as /24, meaning the first 24 bits are the network.

Some ranges are reserved for private use and are not routed on the Internet: 10.0.0.0/8, 172.16.0.0/12 and 192.168.0.0/16. Hosts with private addresses reach the Internet through network address translation (NAT), usually on the edge router. The range 169.254.0.0/16 is used by Automatic Private IP Addressing (APIPA): a Windows host that assigns itself such an address could not reach a DHCP server. 127.0.0.1 is the loopback address.

Subnetting borrows host bits to make more, smaller networks. A /24 has 256 addresses, of which 254 are usable: the first is the network address and the last is the broadcast address. Splitting it into /26 networks borrows two bits, giving four subnets of 64 addresses each and 62 usable hosts per subnet. The general rule: a prefix of /n leaves 32 − n host bits, so 2^(32 − n) − 2 usable hosts.

For example, 192.168.10.0/26 runs from 192.168.10.0 (network) to 192.168.10.63 (broadcast), with hosts .1 to .62. The next subnet starts at 192.168.10.64. A host at 192.168.10.70/26 is therefore on a different subnet from a host at 192.168.10.20/26, and traffic between them must pass through a router.

IPv6 addresses are 128 bits long, written in hexadecimal groups separated by colons. Leading zeros in a group may be dropped and one run of all-zero groups may be replaced with a double colon, so 2001:0db8:0000:0000:0000:0000:0000:0001 becomes 2001:db8::1.""",
     []),
    ("netplus-ports-video", V, "Common ports and protocols",
     "The well-known ports every technician should know by heart.",
     """[00:00] In this video we go through the ports that come up again and again, on the exam and at work.

[00:15] File transfer first. FTP uses port 21 for control and 20 for data. SFTP runs over SSH, so it uses port 22, the same port as SSH remote shells. TFTP is a tiny, unauthenticated protocol on UDP port 69, used to move firmware and configuration files.

[01:30] Remote access: SSH on 22 is the secure choice; Telnet on 23 sends everything, passwords included, in clear text. Windows Remote Desktop uses port 3389.

[02:20] Email: SMTP sends mail on port 25, and 587 for submission from clients. POP3 uses 110 and IMAP uses 143; their secure versions use 995 and 993.

[03:10] Web: HTTP on 80, HTTPS on 443. DNS answers name lookups on port 53, mostly over UDP, and switches to TCP for large answers and zone transfers. DHCP uses UDP ports 67 on the server and 68 on the client.

[04:05] Management: SNMP polls devices on UDP 161 and receives traps on 162. Syslog sends logs on UDP 514. LDAP listens on 389 and LDAPS on 636.

[04:50] A tip for memorising: group the ports by what they do, not by number, and say them out loud. That's it for this one.""",
     []),
    ("netplus-ports-quiz", Q, "Quiz: ports and protocols",
     "Five questions on well-known ports. One attempt unless your instructor allows more.", "",
     [
         mc("Which port does HTTPS use by default?", ["80", "443", "8080", "22"], 1),
         mc("An administrator wants an encrypted remote shell on a Linux router. Which protocol and port?",
            ["Telnet, 23", "SSH, 22", "RDP, 3389", "SNMP, 161"], 1),
         mc("Which protocol uses UDP port 53 for most queries?", ["DHCP", "NTP", "DNS", "TFTP"], 2),
         mc("A Windows host has the address 169.254.12.7. What does that most likely mean?",
            ["It has a static address", "It could not reach a DHCP server", "It is behind NAT", "It is using IPv6"], 1),
         mc("How many usable host addresses does a /26 subnet have?", ["30", "62", "64", "126"], 1),
     ]),
    ("netplus-ipconfig-lab", L, "Lab: inspect a host's IP configuration",
     "Use the command line of the lab's Windows VM, then answer the check.",
     """Your lab environment has a Windows 11 workstation, WS01, connected to the 10.20.30.0/24 office network, and a router at 10.20.30.1.

1. Sign in to WS01 and open a Command Prompt.
2. Display the workstation's IP address, subnet mask and default gateway. Then display the full configuration, including the MAC address, DHCP server and DNS servers.
3. Release and renew the DHCP lease, and note which commands you used.
4. Test that the default gateway answers.
5. Clear the DNS resolver cache, then look up the address of www.example.com with the tool built for DNS queries.

When you are done, answer the check below with the exact commands you used. Capital letters and extra spaces do not matter.""",
     [
         free("Which command shows the IP configuration on Windows?", ["ipconfig", "ipconfig /all"]),
         free("Which command renews the DHCP lease on Windows?", ["ipconfig /renew"]),
         free("Which command tests whether the default gateway 10.20.30.1 answers?", ["ping 10.20.30.1", "ping -n 4 10.20.30.1"]),
         free("Which command clears the DNS resolver cache on Windows?", ["ipconfig /flushdns"]),
         free("Which command-line tool queries a DNS server directly for a name?", ["nslookup", "nslookup www.example.com"]),
     ]),
    ("netplus-s3", S, "Section 3: Network Troubleshooting",
     "A method to follow, and the tools that go with it.", "", []),
    ("netplus-troubleshooting-reading", R, "The troubleshooting methodology",
     "Seven steps that keep you from fixing the wrong problem.",
     """Guessing wastes time and can make an outage worse. The CompTIA troubleshooting methodology gives a repeatable order of work, and it is worth following even when the answer seems obvious.

First, identify the problem. Gather information, question users, identify symptoms, determine whether anything has changed, duplicate the problem if you can, and approach multiple problems one at a time. "Nothing changed" is rarely true: check the change log.

Second, establish a theory of probable cause. Question the obvious, and consider approaches such as top-to-bottom or bottom-to-top through the OSI model, or divide and conquer. Third, test the theory to determine the cause. If the theory is confirmed, determine the next steps to resolve the problem; if not, establish a new theory or escalate.

Fourth, establish a plan of action to resolve the problem and identify the potential effects, such as downtime for other users. Fifth, implement the solution or escalate as necessary. Sixth, verify full system functionality and, if applicable, implement preventive measures so the problem does not return.

Seventh, document findings, actions, outcomes and lessons learned. Documentation is what turns one technician's late night into the whole team's knowledge.

A few command-line tools cover most first checks. ping tests reachability with ICMP echo; tracert (traceroute on Linux) shows each router hop; ipconfig and ip addr show the local configuration; nslookup and dig query DNS; netstat and ss list connections and listening ports; arp -a shows the ARP cache. Start at the bottom: a host with an APIPA address has a DHCP problem, not a DNS problem.""",
     []),
    ("netplus-troubleshooting-quiz", Q, "Quiz: troubleshooting",
     "Four questions on method and tools. One attempt unless your instructor allows more.", "",
     [
         mc("What is the first step of the troubleshooting methodology?",
            ["Establish a theory of probable cause", "Identify the problem", "Implement the solution", "Document findings"], 1),
         mc("A user can reach 8.8.8.8 by IP but not www.example.com by name. What should you suspect first?",
            ["The cable", "DNS", "The default gateway", "The switch port"], 1),
         mc("Which Windows command shows each router hop on the path to a host?",
            ["ping", "tracert", "netstat", "arp -a"], 1),
         mc("After implementing a fix, what should you do before documenting?",
            ["Escalate the ticket", "Verify full system functionality", "Reboot every switch", "Close the ticket"], 1),
     ]),
    ("netplus-s4", S, "Section 4: Review and Assessment",
     "Practise, then show what you know.", "", []),
    ("netplus-practice-test", P, "Network+ practice test",
     "Eight questions across all sections. Take it as often as you like; answers are shown after each attempt.", "",
     [
         mc("Which layer of the OSI model adds source and destination port numbers?",
            ["Network", "Transport", "Session", "Data Link"], 1),
         mc("Which of these is a private IPv4 address?", ["172.32.0.5", "192.169.1.1", "10.44.3.2", "11.0.0.1"], 2),
         mc("Which protocol sends email between mail servers?", ["IMAP", "POP3", "SMTP", "SNMP"], 2),
         mc("Which device forwards frames based on MAC addresses?", ["Router", "Switch", "Hub", "Modem"], 1),
         mc("What is the broadcast address of 192.168.10.64/26?",
            ["192.168.10.127", "192.168.10.255", "192.168.10.63", "192.168.10.128"], 0),
         mc("Which port does Remote Desktop Protocol use?", ["22", "3389", "445", "5900"], 1),
         mc("Which step comes right after testing a theory that is confirmed?",
            ["Document findings", "Establish a plan of action", "Question users", "Verify functionality"], 1),
         mc("Which protocol resolves an IPv4 address to a MAC address on the local network?",
            ["DNS", "DHCP", "ARP", "NAT"], 2),
     ]),
    ("netplus-competency", C, "Competency assessment: Network+ fundamentals",
     "Six questions. One attempt unless your instructor allows more; answers are not shown.", "",
     [
         mc("A workstation on 10.1.1.50/24 cannot reach 10.1.2.10. It can reach 10.1.1.1. What is the most likely cause?",
            ["A DNS failure", "A wrong or missing default gateway", "A bad network cable", "An expired DHCP lease"], 1),
         mc("Which protocol is best suited to live voice traffic?", ["TCP", "UDP", "FTP", "SMTP"], 1),
         mc("How many /27 subnets fit in one /24?", ["4", "8", "16", "32"], 1),
         mc("Which secure protocol should replace Telnet for device management?", ["SNMPv1", "SSH", "HTTP", "TFTP"], 1),
         mc("Which tool lists the ports a Windows host is listening on?", ["netstat -an", "ipconfig /all", "tracert", "nslookup"], 0),
         mc("Which is the shortest correct form of 2001:0db8:0000:0000:0000:0000:0000:0001?",
            ["2001:db8::1", "2001:db8:0:1", "2001::db8::1", "2001:0db8::0001:"], 0),
     ]),
]


@transaction.atomic
def load_demo(*, base_url: str, stdout: Any) -> None:
    """Create the demo catalog once; an item that exists (by slug) is left untouched."""
    created = 0
    section: Activity | None = None
    for index, (slug, kind, title, summary, body, questions) in enumerate(OUTLINE, start=1):
        activity, was_created = Activity.objects.get_or_create(
            slug=slug,
            defaults={
                "title": title,
                "kind": kind,
                "section": None if kind == ActivityKind.SECTION_HEADER else section,
                "position": index * 10,
                "summary": summary,
                "body": body,
                "default_points": DEFAULT_POINTS[kind],
                "captions_vtt": captions_from_transcript(body) if kind == ActivityKind.VIDEO else "",
            },
        )
        if kind == ActivityKind.VIDEO and not was_created and not activity.captions_vtt:
            # Demo videos loaded before captions existed get them from their timed transcript.
            Activity.objects.filter(pk=activity.pk).update(captions_vtt=captions_from_transcript(activity.body))
        if kind == ActivityKind.SECTION_HEADER:
            section = activity
        if was_created:
            created += 1
            Question.objects.bulk_create(
                Question(activity=activity, position=n, prompt=q["prompt"], choices=q["choices"], answer=q["answer"])
                for n, q in enumerate(questions, start=1)
            )
    stdout.write(f"  Catalog:     {len(OUTLINE)} activities of Network+ Fundamentals ({created} new)")
