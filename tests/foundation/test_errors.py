"""What a person is told of an error (issue 16.6): no SQL, no driver module paths, no broker file paths."""

from __future__ import annotations

from metavmm.foundation.errors import hide_paths, plain_message


def test_sql_statement_parameters_and_module_path_are_dropped() -> None:
    raw = ("(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint \"uq_name\"\n"
           "[SQL: INSERT INTO workloads (name) VALUES (%(name)s)]\n[parameters: {'name': 'lab-01'}]\n"
           "(Background on this error at: https://sqlalche.me/e/20/gkpj)")
    assert plain_message(raw) == 'UniqueViolation: duplicate key value violates unique constraint "uq_name"'


def test_file_paths_keep_their_last_part_and_urls_stay_whole() -> None:
    text = ("qemu-img: Could not open '/srv/metavmm/blobs/.incoming/ab12': bad; "
            "see https://broker.example:8443/api/v1/images/ab12 and /var/lib/libvirt/images/x.qcow2")
    assert hide_paths(text) == ("qemu-img: Could not open 'ab12': bad; "
                                "see https://broker.example:8443/api/v1/images/ab12 and x.qcow2")


def test_an_exception_without_a_message_is_named_by_its_class() -> None:
    assert plain_message(TimeoutError()) == "TimeoutError"
    assert plain_message(ValueError("plain words stay")) == "plain words stay"
