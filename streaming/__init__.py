"""The feedback stream: the event contract and the table of feedback kinds, the producer
with its disk spool, the embedded broker and topics, the stream processor (fusion, record
rules, checkpoint) and the preference store."""
