// SPDX-License-Identifier: MIT
// A minimal ERC-20 for tests, the demo and benchmarks. Anyone may mint. Extra helpers produce the
// cases a chain watcher must get right: many Transfer logs in one transaction, a transfer whose
// transaction reverts (its log is never seen), a Transfer-topic log with a malformed data field,
// and ETH forwarded by a contract (an internal transfer that only traces show). The contract has no
// receive function, so plain ETH sent to it reverts.
pragma solidity ^0.8.28;

contract TestToken {
    string public name;
    string public symbol;
    uint8 public immutable decimals;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error Reverted();

    constructor(string memory name_, string memory symbol_, uint8 decimals_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
    }

    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            require(allowed >= amount, "allowance");
            allowance[from][msg.sender] = allowed - amount;
        }
        _move(from, to, amount);
        return true;
    }

    /// Many Transfer logs in one transaction.
    function transferMany(address[] calldata to, uint256[] calldata amounts) external returns (bool) {
        require(to.length == amounts.length, "lengths");
        for (uint256 i = 0; i < to.length; i++) {
            _move(msg.sender, to[i], amounts[i]);
        }
        return true;
    }

    /// Transfers (emitting the Transfer log), then reverts: the log must never be seen.
    function failingTransfer(address to, uint256 amount) external {
        _move(msg.sender, to, amount);
        revert Reverted();
    }

    /// A Transfer-topic log with three topics but 64 bytes of data: not a valid ERC-20 Transfer.
    function oddTransferLog(address to, uint256 amount) external {
        bytes32 topic0 = keccak256("Transfer(address,address,uint256)");
        address from = msg.sender;
        assembly {
            let ptr := mload(0x40)
            mstore(ptr, amount)
            mstore(add(ptr, 0x20), amount)
            log3(ptr, 0x40, topic0, from, to)
        }
    }

    /// Forwards the ETH sent with the call, split over `to`: internal transfers.
    function forward(address payable[] calldata to, uint256[] calldata amounts) external payable {
        require(to.length == amounts.length, "lengths");
        for (uint256 i = 0; i < to.length; i++) {
            (bool ok, ) = to[i].call{value: amounts[i]}("");
            require(ok, "send");
        }
    }

    function _move(address from, address to, uint256 amount) internal {
        uint256 balance = balanceOf[from];
        require(balance >= amount, "balance");
        balanceOf[from] = balance - amount;
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
    }
}
