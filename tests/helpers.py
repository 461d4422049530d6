"""Shared test helpers."""

from __future__ import annotations

from budgetd_client import AdminClient
from budgetd_client._proto.budget.v1 import admin_pb2 as apb

# A test model with round prices (micro-USD per million tokens): 1 token of
# input costs 1 micro-USD, output 2, cache write 5m 1.25 / 1h 2, cache read 0.1.
TEST_MODEL = "test-model"
TEST_SMALL = "test-small"  # 1/10th of TEST_MODEL's prices
TEST_BIG = "test-big"  # 10x TEST_MODEL's prices


def set_test_pricing(admin: AdminClient) -> None:
    for model, scale_num, scale_den, max_out in ((TEST_MODEL, 1, 1, 4096),
                                                 (TEST_SMALL, 1, 10, 4096),
                                                 (TEST_BIG, 10, 1, 8192)):
        admin.set_pricing(apb.ModelPricing(
            model=model, max_output_tokens=max_out, batch_discount_percent=50,
            versions=[apb.PriceVersion(prices=apb.Prices(
                input=1_000_000 * scale_num // scale_den,
                output=2_000_000 * scale_num // scale_den,
                cache_write_5m=1_250_000 * scale_num // scale_den,
                cache_write_1h=2_000_000 * scale_num // scale_den,
                cache_read=100_000 * scale_num // scale_den))]))
